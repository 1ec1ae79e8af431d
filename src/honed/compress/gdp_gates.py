"""GDP's gates on a user's model (GDP, arXiv:2109.02220): one :class:`ChannelGate` per channel group,
multiplying the output of every layer that writes the group through a forward hook.

Hooks leave the model's parameters and state_dict keys as they are, so a checkpoint of the un-gated
model loads into the gated one. A checkpoint written by honed before this layout (each gated module
wrapped as ``<site>.inner`` with its gate at ``<site>.gate.gate``) loads too: a load_state_dict
pre-hook maps it onto the plain keys and copies its gate values into the gates.
"""
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from honed.compress.channel_trace import ChannelGroup, positions_of
from honed.core.errors import InputError


class ChannelGate(nn.Module):
    """GDP (arXiv:2109.02220) gate vector g of shape (C,): multiplies (N, C, ...) maps channel-wise.
    Initialised to ``init`` (card: 1, marked (R))."""

    def __init__(self, channels: int, init: float = 1.0, device: str | torch.device | None = None) -> None:
        super().__init__()
        if channels < 1:
            raise InputError(f"a gate needs at least one channel, got {channels}")
        self.gate = nn.Parameter(torch.full((channels,), float(init), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != len(self.gate):
            raise InputError(f"gate expects (N, {len(self.gate)}, ...) maps, got {tuple(x.shape)}")
        return x * self.gate.view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)


class GateHook:
    """Forward hook multiplying a module's output channels by GDP gates: ``parts`` pairs a gate with
    the output channels it covers (None: all, in order); other channels are left as they are."""

    def __init__(self, parts: list[tuple[ChannelGate, torch.Tensor | None]], width: int) -> None:
        self.parts, self.width = parts, width

    def multiplier(self, device: torch.device) -> torch.Tensor:
        gate, positions = self.parts[0]
        if len(self.parts) == 1 and positions is None:
            return gate.gate
        mult = torch.ones(self.width, device=device)
        for gate, positions in self.parts:
            mult = mult.index_put((positions.to(device),), gate.gate)
        return mult

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        device = self.parts[0][0].gate.device
        if output.device != device:
            raise InputError(f"GDP's gates are on {device} but the model runs on {output.device}: call "
                             "gdp.to(device) after moving the model")
        mult = self.multiplier(device).to(output.dtype)
        return output * mult.view(1, -1, *([1] * (output.dim() - 2)))


def attached_gates(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that carry a GDP gate hook now."""
    return [name for name, module in model.named_modules()
            if any(isinstance(h, GateHook) for h in module._forward_hooks.values())]


def _out_width(module: nn.Module) -> int:
    return module.num_features if isinstance(module, nn.BatchNorm2d) else module.out_channels


class GateAttachment:
    """The gates of ``groups`` (one per group, ``init`` everywhere) and their hooks on ``model``."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], init: float, device: torch.device) -> None:
        self.model = model
        self.gates = [ChannelGate(g.channels, init, device) for g in groups]
        parts: dict[str, list] = {}
        for group, gate in zip(groups, self.gates):
            for producer in group.producers:
                pos = None if producer.positions is None else torch.tensor(positions_of(producer, group.channels),
                                                                           device=device)
                parts.setdefault(producer.site, []).append((gate, pos))
        self.hooks = {site: GateHook(p, _out_width(model.get_submodule(site))) for site, p in parts.items()}
        self.handles: list = []

    def attach(self) -> None:
        self.handles = [self.model.get_submodule(site).register_forward_hook(hook) for site, hook in self.hooks.items()]
        self.handles.append(self.model.register_load_state_dict_pre_hook(self.upgrade_state_dict))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @contextmanager
    def detached(self) -> Iterator[None]:
        """The model without its gate hooks inside the block (e.g. to copy it), gated again after."""
        self.detach()
        try:
            yield
        finally:
            self.attach()

    @torch.no_grad()
    def upgrade_state_dict(self, module, state_dict, prefix, *_args) -> None:
        """load_state_dict pre-hook: ``<site>.inner.<key>`` -> ``<site>.<key>``, and a stored
        ``<site>.gate.gate`` becomes the value of that site's gate (honed's earlier gated layout)."""
        for site, hook in self.hooks.items():
            inner = f"{prefix}{site}.inner."
            for key in [k for k in state_dict if k.startswith(inner)]:
                state_dict[f"{prefix}{site}.{key[len(inner):]}"] = state_dict.pop(key)
            stored = state_dict.pop(f"{prefix}{site}.gate.gate", None)
            gate, positions = hook.parts[0]
            if stored is not None and len(hook.parts) == 1 and positions is None and stored.shape == gate.gate.shape:
                gate.gate.copy_(stored)
