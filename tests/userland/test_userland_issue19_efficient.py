"""Issue 19 on a user-defined CNN: the sharpness measures restore the train/eval flag of every
submodule (item 5) and refuse NaN weights instead of returning NaN (item 9)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.efficient.sharpness import epsilon_sharpness, random_perturbation_loss_increase


def user_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(4 * 36, 3))


BATCH = (torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 2 + [0, 1]))


@pytest.mark.parametrize("measure", [
    lambda m: epsilon_sharpness(m, F.cross_entropy, *BATCH, eps=1e-3, steps=2),
    lambda m: random_perturbation_loss_increase(m, F.cross_entropy, *BATCH, amplitude=1e-3, draws=2,
                                                generator=torch.Generator().manual_seed(0)),
])
def test_a_frozen_batchnorm_inside_a_training_model_stays_frozen(measure):
    model = user_cnn().train()
    model[1].eval()
    weights = [p.detach().clone() for p in model.parameters()]
    assert math.isfinite(measure(model))
    assert model.training and not model[1].training and model[4].training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


@pytest.mark.parametrize("measure", [epsilon_sharpness, random_perturbation_loss_increase])
def test_nan_weights_are_refused(measure):
    model = user_cnn()
    with torch.no_grad():
        model[5].weight[0, 0] = float("nan")
    kwargs = {"amplitude": 1e-3} if measure is random_perturbation_loss_increase else {}
    with pytest.raises(InputError, match="NaN"):
        measure(model, F.cross_entropy, *BATCH, **kwargs)
