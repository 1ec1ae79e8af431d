"""Coupled channels of any traceable conv net, found with torch.fx: the channel groups that GDP (Guo et
al., "GDP: Stabilized Neural Network Pruning via Gates with Differentiable Polarization",
arXiv:2109.02220) gates and :mod:`honed.compress.channel_surgery` removes.

``torch.fx.symbolic_trace`` gives the model's dataflow graph and one forward of ``example`` (shape
propagation) gives every tensor's shape. Each conv (``groups=1``) writes a new *group* of channels;
the walk follows every channel through the graph and couples groups that must stay equal: residual
additions and multiplications (and a module called twice) merge groups, concatenation along channels
places several groups side by side, a flatten before a Linear spreads each channel over H*W columns.

Per group it records who *writes* the channels (:class:`Producer`: the conv and the BatchNorm right
after it; or a depthwise conv / BatchNorm applied to the group further on) and who *reads* them
(:class:`Consumer`: convs, Linear layers). A gate placed after every writer, and zero, makes the
channel exactly 0 wherever it is read, so removing it changes nothing.

A group stays out (``ChannelTrace.frozen`` says why) when removing its channels could change the
network: its channels reach the model output, meet an op honed cannot slice per channel (GroupNorm,
a grouped conv, indexing, a reduction over channels, ...), or reach a reader after an op that turns 0
into something else (sigmoid, adding a constant). Models torch.fx cannot trace (Python control flow
on tensor values or shapes inside ``forward``) are refused with one InputError.
"""
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from honed.core.errors import InputError
from honed.core.modes import eval_mode


@dataclass(frozen=True)
class Producer:
    """A layer writing a group's channels: a conv (``groups=1``) creating them, or a depthwise conv /
    BatchNorm2d applied to them later; ``norm`` names the BatchNorm2d right after it. ``positions``:
    the layer's output channels holding the group's channels 0..C-1 (None: all of them, in order)."""

    layer: str
    norm: str | None = None
    positions: tuple[int, ...] | None = None

    @property
    def site(self) -> str:
        """The module whose output carries the group's gate: the norm if there is one, else the layer."""
        return self.norm or self.layer


@dataclass(frozen=True)
class Consumer:
    """A conv or Linear reading a group's channels at input channels ``positions`` (None: 0..C-1);
    a Linear after a flatten of (C, H, W) maps reads ``features_per_channel = H * W`` columns each."""

    layer: str
    features_per_channel: int = 1
    positions: tuple[int, ...] | None = None


@dataclass
class ChannelGroup:
    """Channels kept or removed together: ``channels`` wide, written by ``producers``, read by
    ``consumers``; named after the conv that creates them."""

    name: str
    channels: int
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)


@dataclass
class ChannelTrace:
    """The prunable groups of a model and, per conv whose channels stay, why (``frozen``)."""

    groups: list[ChannelGroup]
    frozen: dict[str, str]


def positions_of(record: Producer | Consumer, channels: int) -> tuple[int, ...]:
    """The layer channels a record maps the group's channels 0..channels-1 to."""
    return tuple(range(channels)) if record.positions is None else record.positions


def trace_channels(model: nn.Module, example: torch.Tensor) -> ChannelTrace:
    """GDP (arXiv:2109.02220) support: the prunable channel groups of ``model`` for inputs shaped like
    ``example`` (one input with its batch dimension, e.g. (1, C, H, W)).

    Any model torch.fx can trace; InputError when it cannot, or when ``example`` is not a tensor with
    a batch dimension. The model (weights, modes, BN statistics) is left as it was."""
    if not torch.is_tensor(example) or example.dim() < 2 or len(example) == 0:
        raise InputError("example must be one input with its batch dimension, e.g. shape (1, C, H, W)")
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types; the user needs the first line and the fix
        raise InputError(f"channel groups are found by tracing the model with torch.fx, which failed on "
                         f"{type(model).__name__}: {_first_line(err)} (Python control flow on tensor values or "
                         "shapes inside forward cannot be traced; move such checks out of forward)") from None
    with eval_mode(model), torch.no_grad():
        try:
            ShapeProp(graph_module).propagate(example[:1])
        except Exception as err:
            raise InputError(f"the model does not run on example of shape {tuple(example.shape)}: "
                             f"{_first_line(err)}") from None
    from honed.compress.channel_flow import ChannelFlow  # it builds this module's records

    flow = ChannelFlow(dict(graph_module.named_modules()))
    for node in graph_module.graph.nodes:
        flow.visit(node)
    return flow.result()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def find_channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (see :func:`trace_channels`), in graph order."""
    return trace_channels(model, example).groups


