"""04-robust-scratch-tickets experiment pieces (arXiv:2110.14068): the dense baselines' LR is chosen on
the validation split, and R2S's per-image expectations."""
import pytest
import torch

from honed.core.errors import ConfigError
from honed.experiments.e04_robust_scratch_tickets import RSTConfig, mean_lists, select_dense_lr


class FakeArms:
    """Stands in for one seed's Arms: each LR trains a 'model' whose validation robustness is known;
    the test images are deliberately absent, so a selection that touched them would fail."""

    def __init__(self, val_pgd: dict[float, list[float]], val_clean: dict[float, list[float]]) -> None:
        self.cfg = RSTConfig(dense_lrs=tuple(val_pgd))
        self.val_pgd, self.val_clean = val_pgd, val_clean
        self.val_x, self.val_y = torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)
        self.trained = []

    def train_dense(self, hidden, lr):
        self.trained.append(lr)
        model = torch.nn.Linear(1, 1)
        model.lr = lr
        return model, [0.0]

    def robust_correct(self, model, x, y):
        assert x is self.val_x and y is self.val_y, "selection must score on the validation split only"
        return self.val_clean[model.lr], self.val_pgd[model.lr]


def test_select_dense_lr_keeps_the_lr_with_the_best_validation_pgd_accuracy():
    arms = FakeArms({0.01: [1, 0, 0, 0], 0.1: [1, 1, 1, 0], 1.0: [1, 1, 0, 0]},
                    {0.01: [1] * 4, 0.1: [1] * 4, 1.0: [1] * 4})
    chosen = select_dense_lr(arms, (8, 8))
    assert arms.trained == [0.01, 0.1, 1.0]
    assert chosen["lr"] == 0.1 and chosen["model"].lr == 0.1
    assert chosen["val_pgd_acc"] == 0.75
    assert [row["val_pgd_acc"] for row in chosen["lr_table"]] == [0.25, 0.75, 0.5]


def test_select_dense_lr_breaks_ties_by_clean_accuracy_then_the_smaller_lr():
    same = [1, 1, 0, 0]
    arms = FakeArms({0.01: same, 0.1: same, 1.0: same}, {0.01: [1, 1, 0, 0], 0.1: [1, 1, 1, 0], 1.0: [1, 1, 1, 0]})
    assert select_dense_lr(arms, (8,))["lr"] == 0.1


def test_mean_lists_is_the_per_example_mean_over_tickets():
    assert mean_lists([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]) == [0.5, 0.0, 1.0]


def test_config_refuses_an_empty_or_non_positive_lr_grid():
    with pytest.raises(ConfigError):
        RSTConfig(dense_lrs=()).validate()
    with pytest.raises(ConfigError):
        RSTConfig(dense_lrs=(0.1, 0.0)).validate()
