"""honed.models.text_encoder: the classifier head sits beside its encoder (issue 18)."""
from types import SimpleNamespace

import torch

from honed.models.text_encoder import TextClassifier
from tests.device_checks import META, assert_on


class FakeEncoder(torch.nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden)
        self.embed = torch.nn.Embedding(30, hidden)


def test_head_is_placed_on_the_encoder_device():
    assert_on(META, *TextClassifier(FakeEncoder().to(META), 3).head.parameters())
    assert_on("cpu", *TextClassifier(FakeEncoder(), 3).head.parameters())
