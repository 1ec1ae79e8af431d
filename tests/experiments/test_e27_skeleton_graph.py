"""27-skeleton-graph experiment (Skeleton-Graph, arXiv:2109.10257): per-window outcomes, the STB statistic
and the optimiser selection on validation."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import honed.experiments.e27_skeleton_graph as e27
from honed.core.errors import ConfigError
from honed.core.evidence import Term, estimate
from honed.sequence.skeleton_graph import forecast_metrics


def test_window_errors_average_to_the_forecast_metrics():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 10, 21, 3, generator=gen), torch.randn(6, 10, 21, 3, generator=gen)
    per_window = e27.window_errors(pred, target)
    pooled = forecast_metrics(pred, target, torso_joint=e27.TORSO_JOINT)
    for key in e27.WINDOW_METRICS:
        assert len(per_window[key]) == 6
        assert math.isclose(np.mean(per_window[key]), pooled[key], rel_tol=1e-5), key


def test_stb_statistic_matches_stability_and_is_zero_for_a_constant_offset():
    pred, target = torch.zeros(3, 8, 21, 3), torch.zeros(3, 8, 21, 3)
    pred[..., 0] = 0.05  # 50 mm on every joint and frame: no growth over the horizon
    pred[:, 4:, :, 1] = 0.1  # ... then more error in the second half
    per_window = e27.window_errors(pred, target)
    result = SimpleNamespace(metric=lambda arm, key: Term(key, (float(np.mean(per_window[key])),),
                                                           (np.asarray(per_window[key]),)))
    value = estimate(e27.stb_statistic(result, "arm")).value
    assert math.isclose(value, forecast_metrics(pred, target)["stb"], rel_tol=1e-6) and value > 0
    flat = e27.window_errors(torch.full((2, 8, 21, 3), 0.05), torch.zeros(2, 8, 21, 3))
    result = SimpleNamespace(metric=lambda arm, key: Term(key, (float(np.mean(flat[key])),)))
    assert estimate(e27.stb_statistic(result, "arm")).value == pytest.approx(0.0, abs=1e-9)


def test_selection_keeps_the_lowest_validation_error_and_reads_test_once(monkeypatch):
    cfg = replace(e27.SkeletonGraphConfig(), optimizers=("sgd", "adam"), optimizer_lrs=(0.01, 1e-3))
    val = {"sgd": 900.0, "adam": 700.0}
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(e27, "fit_candidate", lambda arm, cfg, data, seed, ctx, name, lr: {
        "model": model, "val_mpjpe": val[name], "best_epoch": 1, "val_curve": [val[name]], "train_s": 1.0,
        "final_train_loss": 0.0})
    tested = []
    monkeypatch.setattr(e27, "evaluate_arm", lambda m, test: tested.append(m) or {"metrics": {}, "per_step": []})
    out = e27.train_selected("mlp", cfg, {"test": None}, 0, None)
    assert out["selection"]["optimizer"] == "adam" and out["selection"]["lr"] == 1e-3
    assert tested == [model] and out["metrics"]["train_s"] == 2.0


def test_optimiser_lists_are_validated():
    with pytest.raises(ConfigError, match="equal length"):
        replace(e27.SkeletonGraphConfig(), optimizer_lrs=(0.01,)).validate()
    with pytest.raises(ConfigError, match="optimizers must be among"):
        replace(e27.SkeletonGraphConfig(), optimizers=("rmsprop", "adam")).validate()
