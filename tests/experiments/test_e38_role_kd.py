"""38-role-kd experiment (role-wise KD, arXiv:2004.08861): the teacher's epochs chosen on validation and
the base pad-crop given to every arm."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import honed.experiments.e38_role_kd as e38
from honed.core.errors import ConfigError
from honed.distill.augment_policy import Schedule, zero_policy

TINY = replace(e38.RoleKDConfig(), channels=(4, 4, 4), train_size=64, val_size=64, population=2,
               search_epochs=1, teacher_epoch_grid=(15, 30, 60, 90))


def test_teacher_epochs_are_the_validation_best_ties_to_fewer(monkeypatch):
    val_by_epochs = {15: 0.80, 30: 0.90, 60: 0.90, 90: 0.85}
    monkeypatch.setattr(e38, "search", lambda *a, **k: {"schedule": Schedule([zero_policy()]).to_json(),
                                                        "best_val": 0.5})

    def fake_epoch(model, teacher, optimizer, split, policy, epoch, epochs, cfg, rng, kd_loss=None):
        model.trained_for = epochs

    monkeypatch.setattr(e38, "train_one_epoch", fake_epoch)
    monkeypatch.setattr(e38, "split_accuracy", lambda model, split: val_by_epochs[model.trained_for])
    out = e38.teacher_stage(TINY, e38.load_digits16(TINY))
    assert out["teacher_epochs"] == 30
    assert out["val_acc_by_epochs"] == {str(k): v for k, v in val_by_epochs.items()}
    assert len(out["test_correct"]) == len(e38.load_digits16(TINY).test.y)


@pytest.mark.parametrize("pad, changed", [(0, False), (2, True)])
def test_arms_without_a_policy_still_get_the_base_pad_crop(monkeypatch, pad, changed):
    seen = []
    monkeypatch.setattr(e38, "distillation_step", lambda model, teacher, x, y, *a, **k: seen.append((x, y)))
    data = e38.load_digits16(TINY)
    model = e38.ThreeConvCNN(TINY.channels)
    cfg = replace(TINY, base_pad=pad)
    e38.train_one_epoch(model, None, e38.adam(model, cfg), data.train, None, 0, 1, cfg, np.random.default_rng(0))
    x = torch.cat([b[0] for b in seen])
    images = lambda t: {img.numpy().tobytes() for img in t}  # noqa: E731
    assert x.shape == data.train.x.shape
    assert (images(x) != images(data.train.x)) == changed


def test_grid_is_validated():
    with pytest.raises(ConfigError, match="teacher_epoch_grid"):
        replace(TINY, teacher_epoch_grid=()).validate()
