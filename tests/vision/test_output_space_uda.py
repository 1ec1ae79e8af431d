"""Tests of honed.vision.output_space_uda (output-space UDA, arXiv:2012.02264): the card's honest unit tests."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.vision.output_space_uda import (SOURCE_LABEL, TARGET_LABEL, OutputSpaceDiscriminator, OutputSpaceUDAStep,
                                           check_probability_maps, confident_pseudo_label_loss, discriminator_loss,
                                           entropy_loss, generator_adversarial_loss, normalised_entropy_map,
                                           poly_learning_rate)

C = 5


def tiny_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, C, 1))


def make_step(lambda_adv=1.0, lambda_ent=1.0):
    seg = tiny_segmenter()
    disc = OutputSpaceDiscriminator(C, widths=(4, 8, 16))
    step = OutputSpaceUDAStep(seg, torch.optim.SGD(seg.parameters(), lr=0.1), disc,
                              torch.optim.Adam(disc.parameters(), lr=1e-2), lambda_adv=lambda_adv, lambda_ent=lambda_ent)
    return step, seg, disc


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, C, (2, 32, 32), generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_normalised_entropy_is_zero_for_one_hot_and_one_for_uniform():
    one_hot = F.one_hot(torch.randint(0, C, (2, 4, 4)), C).permute(0, 3, 1, 2).float()
    assert torch.allclose(normalised_entropy_map(one_hot), torch.zeros(2, 4, 4))
    uniform = torch.full((2, C, 4, 4), 1 / C)
    assert torch.allclose(normalised_entropy_map(uniform), torch.ones(2, 4, 4), atol=1e-6)
    assert entropy_loss(uniform).item() == pytest.approx(1.0, abs=1e-6)


def test_entropy_oracle_two_classes():
    p = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert normalised_entropy_map(p).item() == pytest.approx(expected, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 7), st.integers(0, 1000))
def test_normalised_entropy_lies_in_unit_interval(num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(1, num_classes, 3, 3, generator=g)).softmax(1)
    h = normalised_entropy_map(probs)
    assert (h >= -1e-6).all() and (h <= 1 + 1e-6).all()


def test_entropy_and_discriminator_reject_logits():
    logits = torch.randn(1, C, 32, 32) * 3
    with pytest.raises(InputError):
        normalised_entropy_map(logits)
    with pytest.raises(InputError):
        OutputSpaceDiscriminator(C, widths=(4, 8, 16))(logits)
    with pytest.raises(InputError):
        check_probability_maps(torch.full((1, C, 2, 2), float("nan")))


def test_discriminator_input_channels_sum_to_one_per_pixel():
    step, seg, disc = make_step()
    seen = []
    disc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().sum(1)))
    step(*batch())
    assert len(seen) == 3  # G step on P_t, D step on P_s and P_t
    for sums in seen:
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_discriminator_output_is_one_channel_per_location():
    out = OutputSpaceDiscriminator(C, widths=(16, 32, 64))(torch.full((2, C, 32, 32), 1 / C))
    assert out.shape == (2, 1, 2, 2)


def test_generator_step_does_not_update_discriminator():
    step, seg, disc = make_step()
    before = [p.detach().clone() for p in disc.parameters()]
    seg_before = [p.detach().clone() for p in seg.parameters()]
    step.generator_step(*batch())
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))
    assert all(p.grad is None for p in disc.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(seg_before, seg.parameters()))


def test_discriminator_step_detaches_generator_outputs():
    step, seg, disc = make_step()
    _, probs_s, probs_t = step.generator_step(*batch())
    assert probs_t.requires_grad  # attached maps go in ...
    seg.zero_grad(set_to_none=True)
    d_before = [p.detach().clone() for p in disc.parameters()]
    seg_before = [p.detach().clone() for p in seg.parameters()]
    step.discriminator_step(probs_s, probs_t)
    assert all(p.grad is None for p in seg.parameters())  # ... but no gradient reaches G
    assert all(torch.equal(a, b) for a, b in zip(seg_before, seg.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))


def test_bce_label_convention():
    assert (SOURCE_LABEL, TARGET_LABEL) == (0.0, 1.0)
    big = torch.full((1, 1, 2, 2), 20.0)  # D is sure: "target"
    # G wants D to say "source" on target maps: a confident "target" logit costs ~20
    assert generator_adversarial_loss(big).item() == pytest.approx(20.0, abs=1e-6)
    assert generator_adversarial_loss(-big).item() == pytest.approx(0.0, abs=1e-6)
    # D is right when source maps get low logits and target maps high ones
    assert discriminator_loss(-big, big).item() == pytest.approx(0.0, abs=1e-6)
    assert discriminator_loss(big, -big).item() == pytest.approx(20.0, abs=1e-6)
    zero = torch.zeros(1, 1, 2, 2)
    assert discriminator_loss(zero, zero).item() == pytest.approx(math.log(2), rel=1e-6)


def test_adversarial_training_makes_discriminator_separate_domains():
    torch.manual_seed(0)
    disc = OutputSpaceDiscriminator(C, widths=(4, 8, 16))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    src = F.one_hot(torch.zeros(4, 32, 32, dtype=torch.long), C).permute(0, 3, 1, 2).float()
    tgt = torch.full((4, C, 32, 32), 1 / C)
    for _ in range(50):
        loss = discriminator_loss(disc(src), disc(tgt))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert disc(src).mean() < 0 < disc(tgt).mean()  # source -> label 0 side, target -> label 1 side


def test_confident_pseudo_labels_only_count_confident_pixels():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = 10.0  # pixel 0 confident in class 0, pixel 1 uniform
    expected = F.cross_entropy(logits[:, :, :, :1], torch.zeros(1, 1, 1, dtype=torch.long)).item() / 2
    assert confident_pseudo_label_loss(logits, 0.9).item() == pytest.approx(expected, rel=1e-6)
    assert confident_pseudo_label_loss(torch.zeros(1, 2, 3, 3)).item() == 0.0


def test_step_without_target_terms_needs_no_discriminator():
    seg = tiny_segmenter()
    step = OutputSpaceUDAStep(seg, torch.optim.SGD(seg.parameters(), lr=0.1), lambda_adv=0.0, lambda_ent=0.0)
    terms = step(*batch())
    assert set(terms) == {"seg"}
    with pytest.raises(InputError):
        OutputSpaceUDAStep(seg, torch.optim.SGD(seg.parameters(), lr=0.1), lambda_adv=1e-3)
    with pytest.raises(InputError):
        OutputSpaceUDAStep(seg, torch.optim.SGD(seg.parameters(), lr=0.1), lambda_ent=-1.0)


def test_poly_schedule():
    assert poly_learning_rate(1.0, 0, 10) == 1.0
    assert poly_learning_rate(1.0, 5, 10, power=1.0) == pytest.approx(0.5)
    assert poly_learning_rate(1.0, 10, 10) == 0.0
