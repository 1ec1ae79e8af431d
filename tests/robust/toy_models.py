"""Tiny hand-set models for oracle tests of attacks."""
import torch
from torch import nn


def linear(weight, bias=None) -> nn.Linear:
    """nn.Linear with the given weight (out, in) and optional bias, as float32."""
    weight = torch.tensor(weight, dtype=torch.float32)
    model = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        model.weight.copy_(weight)
        if bias is not None:
            model.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return model
