"""07-complexmix: the shared warm-up continues every arm exactly (snapshot/restore is lossless), and the
recorded unlabeled weight is the confident fraction the card defines."""
from dataclasses import replace

import torch

from honed.experiments.e07_complexmix import ComplexMixConfig, MeanTeacherRun, teacher_confident_fraction
from honed.data.shape_scenes import make_shape_splits

CFG = replace(ComplexMixConfig(), iterations=6, warmup_iterations=3, eval_every=3, widths=(4, 8))


def tiny_data():
    return make_shape_splits(0, n_labeled=6, n_unlabeled=8, n_test=4, size=16)


def test_warmup_snapshot_then_restore_equals_one_straight_run():
    data = tiny_data()
    warm = MeanTeacherRun(CFG, 0)
    warm.train(CFG, data, "supervised", 3)
    resumed_a = MeanTeacherRun(CFG, 0).restore(warm.snapshot())
    resumed_a.train(CFG, data, "classmix", 6)
    resumed_b = MeanTeacherRun(CFG, 0).restore(warm.snapshot())  # a second arm from the same snapshot
    resumed_b.train(CFG, data, "classmix", 6)
    for a, b in zip(resumed_a.student.state_dict().values(), resumed_b.student.state_dict().values()):
        assert torch.equal(a, b)
    sup = MeanTeacherRun(CFG, 0)  # the warm-up is the supervised arm's own prefix
    sup.train(CFG, data, "supervised", 3)
    for a, b in zip(sup.student.state_dict().values(), warm.student.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_a.step == 6 and len(resumed_a.weights) == 3


def test_confident_fraction_counts_pixels_above_tau():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # 2 classes; logits give confidences 0.5 on half the pixels, ~1 elsewhere
            logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            logits[:, 0, :, : x.shape[-1] // 2] = 20.0
            return logits

    assert teacher_confident_fraction(Fixed(), torch.zeros(2, 3, 4, 4), 0.968) == 0.5
