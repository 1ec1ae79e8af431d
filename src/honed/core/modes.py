"""Train/eval modes that come back exactly as they were.

``model.train(was_training)`` restores only a uniform mode: a frozen BatchNorm inside a training model
comes back in train mode and its running statistics drift. :func:`eval_mode` records every submodule's
own flag and puts each one back.
"""
from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block; on exit restore every submodule's own train/eval flag."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
