"""LSTM cGAN (arXiv:1806.03027) components on a discriminator defined here, in a plain loop."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.data.shape_captions import encode_captions, make_captioned_shapes, split_combinations, word_vectors
from honed.generative.lstm_cgan import LSTMCGANTrainer, LSTMConditionalGenerator, wrong_image_indices


class UserDiscriminator(nn.Module):
    """A user's own matching discriminator: flatten the image, concatenate the sentence, MLP."""

    def __init__(self, size: int, sentence_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * size * size + sentence_dim, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))

    def forward(self, image, sentence):
        return self.net(torch.cat([image.flatten(1), sentence], 1)).squeeze(1)


def test_plain_loop_with_a_user_discriminator(device):
    train, _ = split_combinations()
    data = make_captioned_shapes(24, train, seed=0, size=8)
    words, mask, sentence = encode_captions(data.captions, word_vectors(8))
    words, mask, sentence, images = (t.to(device) for t in (words, mask, sentence, data.images))
    torch.manual_seed(0)
    gen = LSTMConditionalGenerator(8, hidden=16, channels=(16,)).to(device)
    disc = UserDiscriminator(8, 8).to(device)
    trainer = LSTMCGANTrainer(gen, disc, steps_per_caption=2)
    for _ in range(3):
        idx = torch.randperm(24, device=device)[:8]
        wrong = images[idx][wrong_image_indices(data.attributes.to(device)[idx])]
        losses = trainer.step(words[idx], mask[idx], sentence[idx], images[idx], wrong)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    final = gen.final_image(words[:4], mask[:4])
    assert final.shape == (4, 3, 8, 8) and final.device.type == device.type


def test_bad_captions_and_shapes_give_one_clear_error(device):
    gen = LSTMConditionalGenerator(8, hidden=16, channels=(16,)).to(device)
    trainer = LSTMCGANTrainer(gen, UserDiscriminator(8, 8).to(device))
    with pytest.raises(InputError, match="empty"):
        encode_captions(["   "], word_vectors(8))
    words = torch.zeros(2, 5, 7, device=device)  # wrong word dimension
    with pytest.raises(InputError, match=r"\(B, T, 8\)"):
        trainer.step(words, torch.ones(2, 5, device=device), torch.zeros(2, 8, device=device),
                     torch.zeros(2, 3, 8, 8, device=device), torch.zeros(2, 3, 8, 8, device=device))
