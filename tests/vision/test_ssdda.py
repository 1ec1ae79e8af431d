"""SSDDA (card 05, Chen et al. 2021): the card's honest unit tests - mixing by the mask, whole-class ClassMix
masks from the source ground truth, the EMA formula, a gradient-free teacher, the exact confidence weight,
step 2 starting from the step-1 weights - and oracle values of the step-1 loss."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.vision.mix_masks import mix_unlabeled
from honed.vision.ssdda import IntraDomainMixing, inter_domain_loss, inter_domain_mix, source_masks


def block_labels(seed: int, n: int = 2, side: int = 8, classes: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (n, side // 2, side // 2), generator=gen)
    return coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)


class TinySeg(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, classes, 1))

    def forward(self, x):
        return self.body(x)


@given(st.integers(0, 10_000))
@settings(max_examples=20)
def test_mixed_pair_is_source_where_mask_is_one_and_target_elsewhere(seed):
    gen = torch.Generator().manual_seed(seed)
    x_s, x_t = torch.rand(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    y_s, y_t = block_labels(seed), block_labels(seed + 1)
    x_mix, y_mix, masks = inter_domain_mix(x_s, y_s, x_t, y_t, torch.Generator().manual_seed(seed))
    on = masks.bool()
    assert torch.equal(x_mix.permute(1, 0, 2, 3)[:, on], x_s.permute(1, 0, 2, 3)[:, on])
    assert torch.equal(x_mix.permute(1, 0, 2, 3)[:, ~on], x_t.permute(1, 0, 2, 3)[:, ~on])
    assert torch.equal(y_mix[on], y_s[on]) and torch.equal(y_mix[~on], y_t[~on])


@given(st.integers(0, 10_000))
@settings(max_examples=20)
def test_classmix_mask_takes_half_the_source_classes_as_whole_regions(seed):
    labels = block_labels(seed, n=3)
    masks = source_masks(labels, torch.Generator().manual_seed(seed))
    for y, m in zip(labels, masks):
        present = torch.unique(y)
        for c in present:
            inside = m[y == c]
            assert bool((inside == inside[0]).all())  # a class region is wholly in or wholly out
        if len(present) > 1:
            assert len(torch.unique(y[m == 1])) == len(present) // 2


def test_single_class_map_gets_a_cutmix_box_or_classmix_rule():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    box = source_masks(labels, torch.Generator().manual_seed(0))
    assert int(box.sum()) == 6 * 6  # round(8 * sqrt(0.5)) = 6: one half-area box
    whole_or_none = source_masks(labels, torch.Generator().manual_seed(0), single_class="classmix")
    assert int(whole_or_none.sum()) in (0, 64)
    assert int(source_masks(labels, torch.Generator().manual_seed(0), mask="cutmix").sum()) == 36


def test_step1_loss_is_the_sum_of_the_three_cross_entropies():
    torch.manual_seed(0)
    model = TinySeg().eval()  # eval: one batch or three give the same logits
    x_s, x_t = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    y_s, y_t = block_labels(1), block_labels(2)
    loss = inter_domain_loss(model, x_s, y_s, x_t, y_t, 4, torch.Generator().manual_seed(5))
    x_mix, y_mix, _ = inter_domain_mix(x_s, y_s, x_t, y_t, torch.Generator().manual_seed(5))
    expected = (F.cross_entropy(model(x_s), y_s) + F.cross_entropy(model(x_t), y_t)
                + F.cross_entropy(model(x_mix), y_mix))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_step2_starts_from_the_step1_weights_and_the_teacher_carries_no_gradient():
    step1 = TinySeg()
    student = copy.deepcopy(step1)
    mt = IntraDomainMixing(student, torch.optim.SGD(student.parameters(), 0.1), 4)
    for ref, s, t in zip(step1.state_dict().values(), student.state_dict().values(), mt.teacher.state_dict().values()):
        assert torch.equal(ref, s) and torch.equal(ref, t)
    probs = mt.pseudo_probs(torch.rand(2, 3, 8, 8))
    assert not probs.requires_grad and all(not p.requires_grad for p in mt.teacher.parameters())
    assert not mt.teacher.training


@pytest.mark.parametrize("decay", [0.0, 1.0, 0.9])
def test_ema_update_formula(decay):
    torch.manual_seed(0)
    student = TinySeg()
    mt = IntraDomainMixing(student, torch.optim.SGD(student.parameters(), 0.5), 4, ema_decay=decay, tau=0.0)
    before_t = {k: v.clone() for k, v in mt.teacher.named_parameters()}
    mt.step(torch.rand(2, 3, 8, 8), block_labels(0), torch.rand(2, 3, 8, 8), torch.Generator().manual_seed(0))
    for name, p in mt.teacher.named_parameters():
        s = dict(student.named_parameters())[name].detach()
        assert torch.allclose(p, decay * before_t[name] + (1 - decay) * s, atol=1e-6)
    if decay == 1.0:
        assert not torch.equal(dict(student.named_parameters())["body.0.weight"], before_t["body.0.weight"])


def test_confidence_weight_is_the_exact_fraction_above_tau():
    torch.manual_seed(0)
    student = TinySeg()
    mt = IntraDomainMixing(student, torch.optim.SGD(student.parameters(), 0.1), 4, tau=0.3)
    u = torch.rand(3, 3, 8, 8)
    _, y_mix, weight = mt.mixed_batch(u, torch.Generator().manual_seed(1))
    probs = mt.pseudo_probs(u)
    gen = torch.Generator().manual_seed(1)
    from honed.vision.mix_masks import classmix_mask

    masks = torch.stack([classmix_mask(p, gen) for p in probs.argmax(1)])
    _, labels, _ = mix_unlabeled(u, probs, masks, 0.3)
    conf = torch.where(masks.bool(), probs.amax(1), probs.amax(1).roll(-1, 0))
    assert 0.0 <= weight <= 1.0 and weight == pytest.approx(float((conf > 0.3).double().mean()))
    assert torch.equal(y_mix, labels)


def test_bad_input_is_refused_and_leaves_the_model_alone():
    torch.manual_seed(0)
    student = TinySeg()
    mt = IntraDomainMixing(student, torch.optim.SGD(student.parameters(), 0.1), 4)
    state = copy.deepcopy(student.state_dict())
    x, u = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    with pytest.raises(InputError, match=r"lie in \[0, 4\)"):
        mt.step(x, torch.full((2, 8, 8), 7), u)
    with pytest.raises(InputError, match="N >= 2"):
        mt.step(x, block_labels(0), u[:1])
    with pytest.raises(InputError, match="do not match"):
        inter_domain_loss(student, x, block_labels(0)[:, :4], x, block_labels(1), 4)
    with pytest.raises(InputError, match="NaN"):
        inter_domain_loss(student, x * float("nan"), block_labels(0), x, block_labels(1), 4)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())  # BN statistics too
    with pytest.raises(InputError, match="augment"):
        IntraDomainMixing(student, torch.optim.SGD(student.parameters(), 0.1), 4, augment="mixup")
