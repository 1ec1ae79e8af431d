import pytest
import torch

from honed.core.errors import UnknownIdError
from honed.core.measure import count_macs, count_params, median_latency
from honed.models import MODELS, create_model


@pytest.mark.parametrize("size", [8, 16, 32])
def test_resnet_s_and_cnn_work_from_8_to_32_pixels(size):
    x = torch.rand(2, 1, size, size)
    for name in ("resnet_s", "cnn"):
        model = create_model(name, in_channels=1, num_classes=7)
        assert model(x).shape == (2, 7)


def test_resnet_width_and_depth_are_arguments():
    small = create_model("resnet_s", widths=(8, 16), blocks_per_stage=1)
    big = create_model("resnet_s", widths=(16, 32, 64), blocks_per_stage=2)
    assert count_params(small) < count_params(big)
    assert len(small.stages) == 2 and len(big.stages[0]) == 2


def test_mlp_and_registry():
    assert create_model("mlp", in_features=64, hidden=(32,), bn=False)(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert {"mlp", "cnn", "resnet_s"} <= set(MODELS.names())
    with pytest.raises(UnknownIdError):
        create_model("resnet50")


def test_macs_are_exact_for_a_linear_and_a_conv():
    assert count_macs(torch.nn.Linear(4, 3, bias=False), torch.rand(1, 4)) == 12
    conv = torch.nn.Conv2d(2, 5, 3, padding=1, bias=False)
    assert count_macs(conv, torch.rand(1, 2, 6, 6)) == 5 * 6 * 6 * 2 * 9
    assert median_latency(conv, torch.rand(1, 2, 6, 6), repeats=3, warmup=1) > 0


def test_median_latency_passes_a_tuple_as_several_arguments_and_restores_mode():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, a, b):
            self.calls.append((a.shape, b.shape, self.training))
            return a + b

    model = TwoInputs().train()
    assert median_latency(model, (torch.rand(2, 3), torch.rand(2, 3)), repeats=2, warmup=1) > 0
    assert model.calls == [((2, 3), (2, 3), False)] * 3 and model.training
