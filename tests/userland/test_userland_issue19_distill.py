"""Issue 19, item 9: RoleKDLoss refuses inf logits (it checked only NaN and returned a NaN loss)."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.distill.role_kd import RoleKDLoss


def test_inf_logits_are_refused():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
    x = torch.randn(5, 6)
    loss = RoleKDLoss()
    assert torch.isfinite(loss(student(x), teacher(x)))
    logits = teacher(x).detach()
    logits[3, 2] = float("inf")
    with pytest.raises(InputError, match="inf"):
        loss(student(x), logits)
    with pytest.raises(InputError, match="inf"):
        loss(-logits, student(x).detach())
