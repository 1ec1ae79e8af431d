"""19-force-regularization experiment (Force Regularization, arXiv:1703.09746): lambda_s is chosen on
validation data only, from a runnable sweep."""
import pytest
import torch

from honed.core.errors import ConfigError
from honed.experiments.e19_force_regularization import ForceRegConfig, load_data, select_force_decay


def row(decay, val_acc, rank):
    return {"force_decay": decay, "val_acc": val_acc, "val_acc_before_lra": val_acc, "total_rank": rank}


def test_selection_takes_the_lowest_rank_within_tolerance_of_dense():
    rows = [row(1e-4, 0.96, 90), row(1e-3, 0.955, 40), row(1e-2, 0.80, 3)]
    assert select_force_decay(rows, dense_val_acc=0.965, tolerance=0.01)["force_decay"] == 1e-3


def test_selection_breaks_rank_ties_toward_the_smaller_lambda():
    rows = [row(1e-3, 0.96, 40), row(1e-4, 0.97, 40)]
    assert select_force_decay(rows, 0.97, 0.01)["force_decay"] == 1e-4


def test_selection_falls_back_to_the_best_validation_accuracy():
    rows = [row(1e-4, 0.90, 90), row(1e-3, 0.92, 40)]
    assert select_force_decay(rows, dense_val_acc=0.99, tolerance=0.01)["force_decay"] == 1e-3


def test_selection_of_nothing_is_a_config_error():
    with pytest.raises(ConfigError):
        select_force_decay([], 0.9, 0.01)


def test_validation_is_cut_from_training_and_the_test_split_is_disjoint():
    train, val, test = load_data(ForceRegConfig(), "cpu")
    assert len(val) > 0 and abs(len(test) / (len(train) + len(val) + len(test)) - 0.3) < 0.01
    rows = lambda split: {tuple(r) for r in split.x.flatten(1).tolist()}  # noqa: E731
    assert not rows(val) & rows(test)
    assert set(torch.unique(val.y).tolist()) == set(range(10))


def test_bad_sweep_or_split_is_refused():
    with pytest.raises(ConfigError):
        ForceRegConfig(force_decays=()).validate()
    with pytest.raises(ConfigError):
        ForceRegConfig(val_fraction=0.0).validate()
