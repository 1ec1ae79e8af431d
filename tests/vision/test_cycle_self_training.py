"""Cycle Self-Training (arXiv:2207.05334): the card's honest unit tests on tiny detectors."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.vision.centernet import CenterNet, centernet_targets, focal_loss, stack_targets
from honed.vision.cycle_self_training import (CycleSelfTraining, class_distribution, consistency_weight,
                                              mean_teacher_detection, render_pseudo_heatmap, strong_view)
from honed.vision.centernet import Detections

SIZE, STRIDE, K = 16, 4, 2


def detector(seed: int) -> CenterNet:
    torch.manual_seed(seed)
    return CenterNet(3, K, width=4, stride=STRIDE)


def batch(seed: int = 0, n: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=gen)
    targets = stack_targets([centernet_targets(torch.tensor([[2.0, 2.0, 9.0, 10.0]]), torch.tensor([i % K]), K,
                                               (SIZE, SIZE), STRIDE, max_objects=4) for i in range(n)])
    u = torch.rand(n, 3, SIZE, SIZE, generator=gen)
    return x, targets, u, strong_view(u, torch.Generator().manual_seed(seed + 1))


class FixedTeacher(nn.Module):
    """A 'teacher' whose heatmap has one confident peak of class ``label`` at output cell (row, col)."""

    def __init__(self, row: int, col: int, label: int) -> None:
        super().__init__()
        self.row, self.col, self.label = row, col, label
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, h, w = len(x), SIZE // STRIDE, SIZE // STRIDE
        heat = torch.full((b, K, h, w), -8.0)
        heat[:, self.label, self.row, self.col] = 6.0
        return {"heatmap": heat, "size": torch.full((b, 2, h, w), 6.0), "offset": torch.full((b, 2, h, w), 0.5)}


def test_class_distribution_by_hand():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 1], logits[0, 1, 0, 1] = math.log(3), -math.log(3)  # sigmoid 0.75 and 0.25 at cell 1
    dist = class_distribution(logits, torch.tensor([[0, 1]]))[0]
    assert torch.allclose(dist[0], torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(dist[1], torch.tensor([0.25, 0.75 * 0.75, 0.75 * 0.25]))
    assert torch.allclose(dist.sum(-1), torch.ones(2))


probability = st.lists(st.floats(0.01, 1.0), min_size=4, max_size=4).map(lambda v: torch.tensor(v) / sum(v))


@settings(max_examples=40, deadline=None)
@given(probability, probability, st.floats(0.05, 0.95))
def test_weight_is_in_unit_range_one_when_equal_and_falls_as_distributions_part(p, q, t):
    for form in ("js", "overlap", "kl"):
        w = consistency_weight(p, q, form)
        assert 0.0 <= float(w) <= 1.0
        assert float(consistency_weight(p, p, form)) == pytest.approx(1.0, abs=1e-6)
        nearer = consistency_weight(p, (1 - t) * p + t * q, form)  # moving from p towards q lowers w
        assert float(nearer) >= float(w) - 1e-6


def test_js_weight_by_hand():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(consistency_weight(p, q, "js")) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_weight(p, q, "overlap")) == 0.0
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])  # JS = ln2 - 3/4 ln(4/3)... by definition:
    m = torch.tensor([0.75, 0.25])
    js = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert float(consistency_weight(p, q, "js")) == pytest.approx(1 - js / math.log(2), rel=1e-5)
    assert m.sum() == 1


def test_weighted_focal_loss_scales_terms_and_normaliser():
    logits, target = torch.tensor([[[[0.0, 2.0]]]]), torch.tensor([[[[1.0, 0.5]]]])
    assert torch.equal(focal_loss(logits, target), focal_loss(logits, target, weight=torch.ones_like(target)))
    w = torch.tensor([[[[0.5, 1.0]]]])
    p = 1 / (1 + math.exp(-2.0))
    expected = -(0.5 * 0.5 ** 2 * math.log(0.5) + (1 - 0.5) ** 4 * p ** 2 * math.log(1 - p)) / 1.0  # clamp_min(1)
    assert focal_loss(logits, target, weight=w).item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_heatmap_puts_each_boxs_weight_on_its_footprint_only():
    dets = [Detections(torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]]), torch.ones(2),
                       torch.tensor([0, 1]), torch.zeros(2))]
    heat, weight = render_pseudo_heatmap(dets, [torch.tensor([0.3, 0.8])], K, (4, 4), STRIDE)
    assert heat[0, 0, 1, 1] == 1 and heat[0, 1, 3, 3] == 1 and heat[0, 0, 3, 3] == 0
    assert weight[0, 0, 1, 1] == pytest.approx(0.3) and weight[0, 1, 3, 3] == pytest.approx(0.8)
    assert torch.all(weight[0, 0][heat[0, 0] == 0] == 1) and torch.all(weight[0, 1][heat[0, 1] == 0] == 1)


def test_routing_t1_labels_only_s2_and_t2_only_s1():
    cst = CycleSelfTraining([detector(0), detector(1)], [torch.optim.SGD(detector(2).parameters(), 0.1)] * 2,
                            stride=STRIDE, num_classes=K)
    cst.teachers = [FixedTeacher(0, 0, 0), FixedTeacher(3, 2, 1)]  # tagged: T1 at (0, 0) class 0, T2 at (3, 2) class 1
    to_s1, to_s2 = cst.pseudo_targets(torch.rand(2, 3, SIZE, SIZE))
    assert (to_s1.source, to_s2.source) == (1, 0)
    assert torch.all(to_s2.heatmap[:, 0, 0, 0] == 1) and to_s2.heatmap[:, 1].max() == 0
    assert torch.all(to_s1.heatmap[:, 1, 3, 2] == 1) and to_s1.heatmap[:, 0].max() == 0
    mt = mean_teacher_detection(detector(0), torch.optim.SGD(detector(2).parameters(), 0.1), stride=STRIDE, num_classes=K)
    mt.teachers = [FixedTeacher(0, 0, 0)]
    assert mt.pseudo_targets(torch.rand(1, 3, SIZE, SIZE))[0].source == 0


def test_step_trains_each_student_on_the_other_teachers_pseudo_labels():
    s1, s2 = detector(0), detector(1)
    cst = CycleSelfTraining([s1, s2], [torch.optim.SGD(s1.parameters(), 0.01), torch.optim.SGD(s2.parameters(), 0.01)],
                            stride=STRIDE, num_classes=K, reweight="none")
    tagged = CycleSelfTraining([detector(0), detector(1)], [torch.optim.SGD(detector(2).parameters(), 0.1)] * 2,
                               stride=STRIDE, num_classes=K, reweight="none")
    tagged.teachers = [FixedTeacher(0, 0, 0), FixedTeacher(3, 2, 1)]
    x, targets, weak, strong = batch()
    pseudo = tagged.pseudo_targets(weak)
    cst.pseudo_targets = lambda images: pseudo  # the tagged teachers' routed targets
    expected = [focal_loss(s(torch.cat([x, strong]))["heatmap"][2:], p.heatmap).item() for s, p in zip((s1, s2), pseudo)]
    log = cst.step(x, targets, weak, strong)
    assert log["unsupervised"] == pytest.approx(expected, rel=1e-5)


def test_ema_is_exact_and_teachers_move_only_by_ema():
    students = [detector(0), detector(1)]
    cst = CycleSelfTraining(students, [torch.optim.SGD(s.parameters(), 0.05) for s in students], stride=STRIDE,
                            num_classes=K, ema_decay=0.9)
    assert all(not p.requires_grad for t in cst.teachers for p in t.parameters())
    before = [copy.deepcopy(t.state_dict()) for t in cst.teachers]
    cst.step(*batch())
    for t, s, old in zip(cst.teachers, students, before):
        for name, p in t.named_parameters():
            assert torch.allclose(p, 0.9 * old[name] + 0.1 * s.state_dict()[name], atol=1e-7)
        assert not t.training
    frozen = CycleSelfTraining([detector(0), detector(1)], [torch.optim.SGD(detector(3).parameters(), 0.1)] * 2,
                               stride=STRIDE, num_classes=K, ema_decay=1.0)
    frozen.optimizers = [torch.optim.SGD(s.parameters(), 0.5) for s in frozen.students]
    kept = [copy.deepcopy(dict(t.named_parameters())) for t in frozen.teachers]
    start = [copy.deepcopy(dict(s.named_parameters())) for s in frozen.students]
    frozen.step(*batch())
    for t, old in zip(frozen.teachers, kept):
        assert all(torch.equal(p, old[n]) for n, p in t.named_parameters())
    assert any(not torch.equal(p, start[0][n]) for n, p in frozen.students[0].named_parameters())


def test_identical_students_without_reweighting_reduce_to_mean_teacher():
    base = detector(0)
    s1, s2, s_mt = (copy.deepcopy(base) for _ in range(3))
    cst = CycleSelfTraining([s1, s2], [torch.optim.SGD(s.parameters(), 0.05) for s in (s1, s2)], stride=STRIDE,
                            num_classes=K, reweight="none", threshold=0.05)
    mt = mean_teacher_detection(s_mt, torch.optim.SGD(s_mt.parameters(), 0.05), stride=STRIDE, num_classes=K,
                                threshold=0.05)
    for seed in range(3):
        data = batch(seed)
        a, b = cst.step(*data), mt.step(*data)
        assert a["loss"][0] == pytest.approx(b["loss"][0], rel=1e-5) and a["loss"][1] == pytest.approx(b["loss"][0], rel=1e-5)
        assert a["pseudo_boxes"][0] > 0


def test_strong_view_keeps_geometry_shape_and_range_and_is_seeded():
    x = torch.rand(3, 3, SIZE, SIZE)
    a, b = strong_view(x, torch.Generator().manual_seed(0)), strong_view(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1 and not torch.equal(a, x)


def test_bad_setups_and_inputs_are_refused_in_one_line_and_change_nothing():
    students = [detector(0), detector(1)]
    opts = [torch.optim.SGD(s.parameters(), 0.1) for s in students]
    with pytest.raises(InputError, match="exactly two students"):
        CycleSelfTraining(students + [detector(2)], opts + opts[:1], stride=STRIDE, num_classes=K)
    with pytest.raises(InputError, match="compares two teachers"):
        CycleSelfTraining(students[:1], opts[:1], stride=STRIDE, num_classes=K, routing="self")
    with pytest.raises(InputError, match="distinct modules"):
        CycleSelfTraining([students[0]] * 2, opts, stride=STRIDE, num_classes=K)
    with pytest.raises(InputError, match="routing"):
        CycleSelfTraining(students, opts, stride=STRIDE, num_classes=K, routing="ring")
    cst = CycleSelfTraining(students, opts, stride=STRIDE, num_classes=K)
    for s in students:
        s.eval()
    state = [copy.deepcopy(s.state_dict()) for s in students]
    x, targets, weak, strong = batch()
    for args, words in [((x, targets, weak, strong[:1]), "views of the same images"),
                        ((x, targets, weak * float("nan"), strong), "NaN"),
                        ((x[0], targets, weak, strong), r"\(B, C, H, W\)"),
                        ((x, "boxes", weak, strong), "stack_targets"),
                        (([x] * 3, [targets] * 3, weak, strong), "one per student")]:
        with pytest.raises(InputError, match=words):
            cst.step(*args)
    assert all(not s.training for s in students)
    assert all(torch.equal(v, state[i][k]) for i, s in enumerate(students) for k, v in s.state_dict().items())


def test_negative_threshold_leaves_uncertain_cells_out_of_the_unlabeled_loss():
    class Unsure(FixedTeacher):
        def forward(self, x):
            out = super().forward(x)
            out["heatmap"][:, 0, 3, 3] = 0.0  # score 0.5 > 0.3 ... but below tau = 0.6: uncertain
            return out

    mt = mean_teacher_detection(detector(0), torch.optim.SGD(detector(2).parameters(), 0.1), stride=STRIDE,
                                num_classes=K, threshold=0.6, negative_threshold=0.3)
    mt.teachers = [Unsure(0, 0, 1)]
    target = mt.pseudo_targets(torch.rand(1, 3, SIZE, SIZE))[0]
    assert target.weight_map[0, 0, 3, 3] == 0 and target.heatmap[0, 1, 0, 0] == 1  # the peak stays a positive
    assert target.weight_map[0, 0, 1, 3] == 1  # a confident background cell stays a negative
    with pytest.raises(InputError, match="negative_threshold"):
        mean_teacher_detection(detector(0), torch.optim.SGD(detector(2).parameters(), 0.1), stride=STRIDE,
                               num_classes=K, threshold=0.5, negative_threshold=0.7)


def test_strong_view_with_a_cpu_generator_matches_the_cpu_view(device):
    """Issue 18: a CPU generator drives the augmentation of images on ``device`` (drawn there, moved)."""
    images = torch.rand(2, 3, 8, 8)
    on_cpu = strong_view(images, torch.Generator().manual_seed(0))
    moved = strong_view(images.to(device), torch.Generator().manual_seed(0))
    assert moved.device == torch.device(device) and torch.allclose(moved.cpu(), on_cpu, atol=1e-6)
