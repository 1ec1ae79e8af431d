"""The channel walk behind :func:`honed.compress.channel_trace.trace_channels` (GDP, arXiv:2109.02220):
one pass over a torch.fx graph in topological order that gives every tensor a :class:`Layout` (which
group channel sits at each position of dim 1) and couples groups where ops mix them.

Ops are sorted into tables: channel-wise ops that keep 0 at 0 (ReLU, pooling, dropout, ...), channel-wise
ops that move 0 (sigmoid, ...), binary ops (add/sub/mul/div), concatenation, flattens and spatial
reductions. Every other op that touches a tracked tensor freezes the groups it touches.
"""
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from honed.compress.channel_trace import ChannelGroup, ChannelTrace, Consumer, Producer

# ops that keep every channel where it is and map 0 to 0 (a removed channel stays 0)
ZERO_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                        nn.Mish, nn.Hardswish, nn.Tanh, nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity,
                        nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                        nn.ZeroPad2d)
ZERO_KEEPING = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish,
                torch.tanh, F.hardtanh, F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                F.adaptive_max_pool2d, F.interpolate, operator.neg, torch.neg,
                "relu", "relu_", "tanh", "neg", "contiguous", "clone", "detach", "float", "to",
                torch.squeeze, torch.unsqueeze, "squeeze", "unsqueeze"}  # (dims 0 and 1 checked to stay put)
# channel-keeping ops that move 0 elsewhere: a removed channel is no longer 0 after them
ZERO_MOVING_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
ZERO_MOVING = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, "sigmoid", "exp", torch.exp}
BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
          operator.sub: "add", operator.isub: "add", torch.sub: "add", "sub": "add", "sub_": "add",
          operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
          operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "div_": "div"}
CONCAT = {torch.cat, torch.concat}
FLATTEN = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
SHAPE_ONLY = {getattr, "size", "dim"}


@dataclass
class Layout:
    """What a tensor's dim 1 holds: per channel (group id, index in group) or None (a channel that
    stays), whether it is 0 when its gate is 0 (``moved``: None, or the op that moved it off 0), and
    ``features`` entries per channel along dim 1 (1, or H*W after a flatten)."""

    slots: list[tuple[int, int] | None]
    moved: list[str | None]
    features: int = 1

    def groups(self) -> set[int]:
        return {s[0] for s in self.slots if s is not None}


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _nodes_in(args) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


class ChannelFlow:
    """One pass over the fx graph in topological order, assigning a :class:`Layout` to each node."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.parent: list[int] = []          # union-find over group ids
        self.width: list[int] = []
        self.born: list[str] = []            # conv creating the group
        self.reason: dict[int, str] = {}     # frozen group id -> why
        self.layout: dict[fx.Node, Layout | None] = {}
        self.outputs: dict[str, list] = {}   # writer or norm -> slots of its output
        self.norm_of: dict[str, str | None] = {}
        self.inputs: dict[str, tuple[list, int]] = {}  # reader -> (slots, features)
        self.born_by: dict[str, int] = {}
        self.norm_nodes: set[fx.Node] = set()
        self.attributes: list[str] = []     # get_attr targets (a weight read directly, bypassing its module)

    # -- union-find and freezing
    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def freeze(self, groups, why: str) -> None:
        for g in groups:
            self.reason.setdefault(self.find(g), why)

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.width[ra] != self.width[rb]:
            self.freeze((ra, rb), f"'{where}' combines it with channels of another width")
            return
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        if rb in self.reason:
            self.reason.setdefault(ra, self.reason[rb])

    def unify(self, a: Layout, b: Layout, where: str) -> None:
        """Channels at the same position of ``a`` and ``b`` must be removed together."""
        if len(a.slots) != len(b.slots) or a.features != b.features:
            self.freeze(a.groups() | b.groups(), f"'{where}' combines it with a differently laid out tensor")
            return
        for sa, sb in zip(a.slots, b.slots):
            if sa is None or sb is None:
                if sa is not None or sb is not None:
                    self.freeze([(sa or sb)[0]], f"'{where}' combines it with channels that cannot be removed")
            elif sa[1] != sb[1]:
                self.freeze((sa[0], sb[0]), f"'{where}' combines its channels in another order")
            else:
                self.union(sa[0], sb[0], where)

    # -- the walk
    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            self.layout[node] = None
            if node.op == "get_attr":
                self.attributes.append(str(node.target))
        elif node.op == "output":
            self.freeze_inputs(node, "it reaches the model output")
        elif node.op == "call_module":
            self.layout[node] = self.call_module(node, self.modules[node.target])
        else:
            self.layout[node] = self.call_function(node)

    def input_layout(self, node: fx.Node) -> Layout | None:
        first = node.args[0] if node.args else None
        return self.layout.get(first) if isinstance(first, fx.Node) else None

    def freeze_inputs(self, node: fx.Node, why: str) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            layout = self.layout.get(arg)
            if layout is not None:
                self.freeze(layout.groups(), why)

    def unknown(self, node: fx.Node, what: str) -> None:
        self.freeze_inputs(node, f"{what} uses it and honed cannot remove channels through it")
        return None

    def call_module(self, node: fx.Node, module: nn.Module) -> Layout | None:
        layout = self.input_layout(node)
        name = node.target
        if isinstance(module, nn.Conv2d):
            return self.conv(node, name, module, layout)
        if isinstance(module, nn.BatchNorm2d):
            return self.batchnorm(node, name, module, layout)
        if isinstance(module, nn.Linear):
            return self.linear(node, name, module, layout)
        if isinstance(module, nn.Flatten):
            return self.flatten(node, layout)
        if isinstance(module, ZERO_KEEPING_MODULES + ZERO_MOVING_MODULES):
            moved = f"'{name}' ({type(module).__name__})" if isinstance(module, ZERO_MOVING_MODULES) else None
            return self.channelwise(node, layout, moved)
        return self.unknown(node, f"'{name}' ({type(module).__name__})")

    def call_function(self, node: fx.Node) -> Layout | None:
        target, what = node.target, getattr(node.target, "__name__", str(node.target))
        if target in SHAPE_ONLY:
            return None
        if target in ZERO_KEEPING or target in ZERO_MOVING:
            return self.channelwise(node, self.input_layout(node), f"'{what}'" if target in ZERO_MOVING else None)
        if target in BINARY:
            return self.binary(node, BINARY[target], what)
        if target in CONCAT:
            return self.concat(node)
        if target in FLATTEN:
            return self.flatten(node, self.input_layout(node))
        if target in REDUCE:
            return self.reduce(node, self.input_layout(node), what)
        return self.unknown(node, f"'{what}'")

    # -- layers
    def conv(self, node: fx.Node, name: str, conv: nn.Conv2d, layout: Layout | None) -> Layout | None:
        if conv.groups == 1:
            self.read(name, layout, conv.in_channels)
            slots = self.new_group(name, conv.out_channels)
            self.write(name, node, Layout(slots, [None] * len(slots)))
            return Layout(slots, [None] * len(slots))
        if conv.groups == conv.in_channels == conv.out_channels and layout is not None:  # depthwise
            self.write(name, node, layout)
            return Layout(list(layout.slots), [None] * len(layout.slots))
        if layout is not None:
            self.freeze(layout.groups(), f"'{name}' is a grouped conv (groups={conv.groups})")
        return None

    def batchnorm(self, node: fx.Node, name: str, bn: nn.BatchNorm2d, layout: Layout | None) -> Layout | None:
        if layout is None:
            return None
        if node not in self.norm_nodes:  # a BatchNorm on channels written further up: it carries a gate too
            if not bn.affine:
                self.freeze(layout.groups(), f"'{name}' (BatchNorm2d without affine parameters) cannot carry a gate")
                return layout
            self.write(name, node, layout)
        return Layout(list(layout.slots), [None] * len(layout.slots))

    def linear(self, node: fx.Node, name: str, linear: nn.Linear, layout: Layout | None) -> None:
        shape = _shape(node.args[0])
        flat_2d = shape is not None and len(shape) == 2
        if layout is not None and (not flat_2d or len(layout.slots) * layout.features != linear.in_features):
            self.freeze(layout.groups(), f"'{name}' (Linear) reads it from a tensor of shape {shape}")
        else:
            self.read(name, layout, linear.in_features)
        return None

    def read(self, name: str, layout: Layout | None, width: int) -> None:
        """``name`` reads ``layout``'s channels (a reused layer must read the same channels each call)."""
        if layout is None:
            layout = Layout([None] * width, [None] * width)
        for slot, moved in zip(layout.slots, layout.moved):
            if slot is not None and moved is not None:
                self.freeze([slot[0]], f"'{name}' reads it after {moved}, which does not keep a removed channel at 0")
        if name in self.inputs:
            self.unify(self.inputs[name], layout, name)
        else:
            self.inputs[name] = layout

    def new_group(self, name: str, width: int) -> list[tuple[int, int]]:
        if name not in self.born_by:  # a conv called twice writes the same group both times
            self.born_by[name] = len(self.parent)
            self.parent.append(len(self.parent))
            self.width.append(width)
            self.born.append(name)
        return [(self.born_by[name], i) for i in range(width)]

    def write(self, name: str, node: fx.Node, layout: Layout) -> None:
        """``name`` writes ``layout``'s channels; the BatchNorm2d right after it (if it is the only user)
        becomes its norm, after which the gate sits."""
        users = list(node.users)
        user = users[0] if len(users) == 1 else None
        norm = None
        if user is not None and user.op == "call_module" and user.args[0] is node:
            module = self.modules[user.target]
            if isinstance(module, nn.BatchNorm2d) and module.affine and module.num_features == len(layout.slots):
                norm = user.target
                self.norm_nodes.add(user)
        if self.norm_of.setdefault(name, norm) != norm:
            self.freeze(layout.groups(), f"'{name}' is called twice with different BatchNorms after it")
        if name in self.outputs:
            self.unify(self.outputs[name], layout, name)
        else:
            self.outputs[name] = layout

    # -- functions and methods
    def channelwise(self, node: fx.Node, layout: Layout | None, moved: str | None) -> Layout | None:
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        if layout is None:
            return None
        if shape_in is None or shape_out is None or shape_in[:2] != shape_out[:2]:
            return self.unknown(node, f"'{node.target}'")
        return Layout(list(layout.slots), [moved or m for m in layout.moved] if moved else list(layout.moved),
                      layout.features)

    def binary(self, node: fx.Node, kind: str, what: str) -> Layout | None:
        a = node.args[0]
        b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        la, lb = (self.layout.get(x) if isinstance(x, fx.Node) else None for x in (a, b))
        if la is None and lb is None:
            return None
        if la is not None and lb is not None:
            if kind == "div" or len(_shape(a)) != len(_shape(b)):
                return self.unknown(node, f"'{what}'")
            self.unify(la, lb, what)
            moved = [ma or mb for ma, mb in zip(la.moved, lb.moved)] if kind == "add" else \
                [ma and mb for ma, mb in zip(la.moved, lb.moved)]
            return Layout(list(la.slots), moved, la.features)
        tracked, other, tracked_node = (la, b, a) if la is not None else (lb, a, b)
        if (kind == "div" and tracked is lb) or not self.channel_free(other, len(_shape(tracked_node))):
            return self.unknown(node, f"'{what}'")
        moved = list(tracked.moved) if kind != "add" else [m or f"'{what}' of another tensor" for m in tracked.moved]
        return Layout(list(tracked.slots), moved, tracked.features)

    @staticmethod
    def channel_free(other, ndim: int) -> bool:
        """A number, or a tensor that broadcasts along dim 1 (size 1 there or no such dim)."""
        shape = _shape(other) if isinstance(other, fx.Node) else None
        if shape is None:
            return not isinstance(other, fx.Node) or "tensor_meta" not in other.meta
        index = 1 - (ndim - len(shape))
        return index < 0 or shape[index] == 1

    def concat(self, node: fx.Node) -> Layout | None:
        parts = list(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = _shape(node)
        layouts = [self.layout.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if all(lay is None for lay in layouts) or shape is None:
            return None
        if dim % len(shape) != 1:  # batch or spatial concatenation: channels at one position stay together
            first = next(lay for lay in layouts if lay is not None)
            for part, lay in zip(parts, layouts):
                width = _shape(part)[1]
                self.unify(first, lay or Layout([None] * width, [None] * width, first.features), "cat")
            return first
        if len(shape) != 4 or any(lay is not None and lay.features != 1 for lay in layouts):
            return self.unknown(node, "'cat'")
        slots, moved = [], []
        for part, lay in zip(parts, layouts):
            width = _shape(part)[1]
            slots += lay.slots if lay is not None else [None] * width
            moved += lay.moved if lay is not None else [None] * width
        return Layout(slots, moved)

    def flatten(self, node: fx.Node, layout: Layout | None) -> Layout | None:
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        if layout is None:
            return None
        if shape_in == shape_out:
            return layout
        if (shape_in and shape_out and len(shape_in) >= 3 and layout.features == 1 and len(shape_out) == 2
                and shape_out[0] == shape_in[0] and shape_out[1] == math.prod(shape_in[1:])):
            return Layout(list(layout.slots), list(layout.moved), math.prod(shape_in[2:]))
        return self.unknown(node, f"'{getattr(node.target, '__name__', node.target)}'")

    def reduce(self, node: fx.Node, layout: Layout | None, what: str) -> Layout | None:
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if layout is None:
            return None
        if dims is None or shape_in is None or shape_out is None:
            return self.unknown(node, f"'{what}'")
        dims = {d % len(shape_in) for d in ((dims,) if isinstance(dims, int) else dims)}
        if dims & {0, 1} or shape_out[:2] != shape_in[:2] or layout.features != 1:
            return self.unknown(node, f"'{what}'")
        return Layout(list(layout.slots), list(layout.moved))

    # -- the groups
    def result(self) -> ChannelTrace:
        norms = {n: w for w, n in self.norm_of.items() if n is not None}
        for attribute in self.attributes:  # a layer whose tensors are also read directly cannot be sliced
            owner = attribute.rpartition(".")[0]
            for layout in (self.outputs.get(owner), self.inputs.get(owner), self.outputs.get(norms.get(owner))):
                if layout is not None:
                    self.freeze(layout.groups(), f"'{attribute}' is read directly, outside its layer")
        producers: dict[int, list[Producer]] = {}
        consumers: dict[int, list[Consumer]] = {}
        for name, layout in self.outputs.items():
            for root, pos in self.positions(name, layout).items():
                producers.setdefault(root, []).append(Producer(name, self.norm_of.get(name), pos))
        for name, layout in self.inputs.items():
            for root, pos in self.positions(name, layout).items():
                consumers.setdefault(root, []).append(Consumer(name, layout.features, pos))
        roots = sorted({self.find(g) for g in range(len(self.parent))})
        for root in roots:
            if root not in consumers:
                self.reason.setdefault(root, "no conv or Linear reads its channels")
        groups = [ChannelGroup(self.born[r], self.width[r], producers[r], consumers[r])
                  for r in roots if r not in self.reason]
        return ChannelTrace(groups, {self.born[r]: self.reason[r] for r in roots if r in self.reason})

    def positions(self, name: str, layout: Layout) -> dict[int, tuple[int, ...] | None]:
        """Per group root, the positions of its channels 0..C-1 in ``layout`` (None: all, in order)."""
        found: dict[int, list[int]] = {}
        for p, slot in enumerate(layout.slots):
            if slot is not None:
                root = self.find(slot[0])
                found.setdefault(root, [-1] * self.width[root])
                if found[root][slot[1]] != -1:
                    self.freeze([root], f"'{name}' holds one of its channels twice")
                found[root][slot[1]] = p
        out = {}
        for root, pos in found.items():
            if -1 in pos:
                self.freeze([root], f"'{name}' holds only some of its channels")
            identity = pos == list(range(len(layout.slots)))
            out[root] = None if identity else tuple(pos)
        return out
