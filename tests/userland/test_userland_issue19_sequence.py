"""Issue 19 on user-defined models: MeanTeacher's schedule follows a short run (item 1); HyperLISTA
refuses zero and non-unit dictionary columns naming A, not p (item 8)."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.sequence.hyperlista import ALISTA, HyperLISTA, gaussian_sensing_matrix
from honed.sequence.mean_teacher import MeanTeacher


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 4, generator=gen) * 0.5 + (2.0 * y[:, None] - 1.0)
    return x, y


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


def test_mean_teacher_trains_a_300_step_run_at_the_users_lr():
    torch.manual_seed(0)
    student = UserNet()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="teacher will lag"):  # the card's 0.999 on a 300-step run
        MeanTeacher(student, optimizer, total_steps=300)
    # ramps and lr from the defaults; a short EMA and a consistency weight sized for 32 labels
    mt = MeanTeacher(student, optimizer, total_steps=300, ema_decay=0.97, max_consistency=1.0)
    assert mt.rampup_steps + mt.rampdown_steps <= 300
    peak = max(mt.schedule(t)["lr"] for t in range(300))
    assert peak == pytest.approx(1e-2)  # the user's lr, reached after the scaled ramp-up
    x, y = blobs(256, 0)
    targets = y.clone()
    targets[32:] = -1  # 32 labels, the rest unlabeled
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        idx = torch.randint(0, 256, (32,), generator=gen)
        mt.step(x[idx], targets[idx])
    x_test, y_test = blobs(200, 2)
    with torch.no_grad():
        accuracy = (mt.teacher(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9  # chance is 0.5; the old defaults left the lr at ~1e-10 and both models at chance


def test_mean_teacher_refuses_ramps_longer_than_the_run_before_touching_the_optimizer():
    student = UserNet()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    with pytest.raises(InputError, match="exceed total_steps"):
        MeanTeacher(student, optimizer, total_steps=300, rampup_steps=10_000, rampdown_steps=6_250)
    assert optimizer.param_groups[0]["lr"] == 1e-2


def test_hyperlista_zero_column_blames_the_dictionary():
    A = gaussian_sensing_matrix(8, 16, torch.Generator().manual_seed(0))
    A[:, 3] = 0.0
    for solver in (HyperLISTA, ALISTA):
        with pytest.raises(InputError, match=r"column\(s\) \[3\] of A are zero"):
            solver(A, layers=4)


def test_hyperlista_refuses_non_unit_columns():
    A = gaussian_sensing_matrix(8, 16, torch.Generator().manual_seed(0)) * 3.0
    with pytest.raises(InputError, match="unit-norm columns"):
        HyperLISTA(A, layers=4)
    HyperLISTA(A / A.norm(dim=0), layers=4)  # normalised: accepted
