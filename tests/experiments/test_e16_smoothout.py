"""16-smoothout experiment (SmoothOut, arXiv:1805.07898): the runnable amplitude sweep."""
from dataclasses import replace

import pytest

import honed.experiments.e16_smoothout as e16
from honed.core.errors import ConfigError
from honed.data.base import Dataset

TINY = replace(e16.SmoothOutConfig(), epochs=1, hidden=(16,), large_batch=256, ghost_size=64, sweep_seeds=(10,),
               sweep_none=(0.003, 0.01), sweep_filter=(0.03, 0.1))


def no_test_split(cfg):
    data = e16.load_digits(cfg)
    return Dataset(data.name, data.train, data.val, None, data.num_classes)  # reading test would fail


def test_sweep_picks_from_its_grids_on_validation_only():
    out = e16.amplitude_sweep(TINY, no_test_split(TINY))
    assert out["amplitude"] in TINY.sweep_none and out["ada_amplitude"] in TINY.sweep_filter
    assert set(out["val_acc"]) == {"none", "filter"}
    assert {float(a) for a in out["val_acc"]["none"]} == set(TINY.sweep_none)
    for accs in out["val_acc"].values():
        assert all(0.0 <= v <= 1.0 for v in accs.values())
    best = max(out["val_acc"]["none"].values())
    assert out["val_acc"]["none"][repr(out["amplitude"])] == best


def test_sweep_ties_go_to_the_larger_amplitude(monkeypatch):
    monkeypatch.setattr(e16, "evaluate_classifier", lambda *a, **k: {"accuracy": 0.5, "loss": 1.0})
    out = e16.amplitude_sweep(TINY, no_test_split(TINY))
    assert out["amplitude"] == max(TINY.sweep_none) and out["ada_amplitude"] == max(TINY.sweep_filter)


def test_sweep_source_and_grids_are_validated():
    with pytest.raises(ConfigError, match="amplitude_source"):
        replace(TINY, amplitude_source="test").validate()
    with pytest.raises(ConfigError, match="swept amplitude"):
        replace(TINY, sweep_none=(0.0,)).validate()
