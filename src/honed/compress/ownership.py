"""Lottery-ticket ownership verification (You are caught stealing my winning lottery ticket! Making a
lottery ticket claim its ownership, arXiv:2111.00162; reference code VITA-Group/NO-stealing-LTH).

White-box (scheme 2): a QR code (:mod:`honed.compress.qr_code`) is written into the *kernel
connectivity* of one conv layer of a sparse mask. The connectivity of a conv mask or weight of shape
(out, in, kh, kw) is the (out, in) bool matrix ``B[j, i] = any(kernel[j, i] != 0)`` (rows are output
channels). The owner's secret key is ``(layer, row, col)``: the 29x29 window
``B[row:row+29, col:col+29]``. Only the code's data modules are written; the function patterns
(finders + separators, timing, alignment, format, dark module) keep the original mask and are
restored from the owner's template when the code is read back.

Black-box (scheme 3): abstract trigger images with random labels trained into the ticket
(:class:`TriggerMixCallback`); verify with :func:`trigger_accuracy`. Removal attack: extra global
magnitude pruning (:func:`prune_further`). Ambiguity attacks: :func:`forgery_attack` (an attacker
writes their own code into the stolen mask) and :func:`search_signature` (an attacker claims a code
is "found" in some window of a mask they did not sign).
"""
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.masks import Mask, magnitude_prune, sparsity
from honed.compress.qr_code import QR_SIZE, check_code, data_cells, qr_decode, qr_encode
from honed.core.errors import InputError
from honed.core.loop import Callback, TrainState, evaluate_classifier

__all__ = ["ForgeryOutcome", "SignatureKey", "SignatureReading", "TriggerMixCallback", "connectivity",
           "embed_signature", "extract_signature", "find_host", "forgery_attack", "host_layers",
           "make_trigger_set", "prune_further", "qr_decode", "qr_encode", "read_signature",
           "search_signature", "trigger_accuracy", "window_agreement"]


@dataclass(frozen=True)
class SignatureKey:
    """The owner's secret (arXiv:2111.00162 step 2b): conv ``layer`` (parameter name) and the top-left
    ``row`` (output channel) / ``col`` (input channel) of the 29x29 window in its connectivity."""

    layer: str
    row: int
    col: int


@dataclass(frozen=True)
class SignatureReading:
    """What a verifier reads: ``ber`` (fraction of the 567 data modules differing from the owner's
    code) and ``text`` (the QR decode of the window, None when unreadable)."""

    key: SignatureKey
    ber: float
    text: str | None


def connectivity(kernel: torch.Tensor) -> torch.Tensor:
    """Channel connectivity (arXiv:2111.00162): (out, in, kh, kw) mask or weight -> (out, in) bool,
    True where the kernel (output channel j, input channel i) has a non-zero entry."""
    if not torch.is_tensor(kernel) or kernel.dim() != 4:
        raise InputError(f"connectivity needs a conv tensor (out, in, kh, kw), got shape "
                         f"{tuple(getattr(kernel, 'shape', ()))}")
    return (kernel != 0).flatten(2).any(2)


def _tensors(source: Mask | nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return {k: v.detach() for k, v in source.named_parameters()}
    if not isinstance(source, dict):
        raise InputError(f"source must be a mask (dict name -> bool tensor) or an nn.Module, got "
                         f"{type(source).__name__}")
    return source


def _host_tensor(source: Mask | nn.Module, layer: str) -> torch.Tensor:
    """The conv tensor ``layer`` of ``source``; InputError naming the layer when it cannot host."""
    tensors = _tensors(source)
    if layer not in tensors:
        what = f"model {type(source).__name__}" if isinstance(source, nn.Module) else "mask"
        raise InputError(f"layer '{layer}' does not exist in the {what} (layers: {', '.join(tensors) or 'none'})")
    t = tensors[layer]
    if t.dim() != 4 or t.shape[0] < QR_SIZE or t.shape[1] < QR_SIZE:
        raise InputError(f"layer '{layer}' has shape {tuple(t.shape)}; a signature needs a conv tensor "
                         f"(out, in, kh, kw) with out and in >= {QR_SIZE}")
    return t


def host_layers(source: Mask | nn.Module, layers: Iterable[str] | None = None) -> list[str]:
    """Candidate hosts: ``layers`` (each checked, errors name it) or every conv tensor of ``source``
    with at least 29 output and 29 input channels (arXiv:2111.00162 step 2b)."""
    if layers is not None:
        layers = list(layers)
        for name in layers:
            _host_tensor(source, name)
    else:
        layers = [k for k, t in _tensors(source).items()
                  if t.dim() == 4 and t.shape[0] >= QR_SIZE and t.shape[1] >= QR_SIZE]
    if not layers:
        raise InputError(f"no conv layer with >= {QR_SIZE} input and output channels can host a signature")
    return layers


def window_agreement(conn: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Fraction of the 567 data modules where each 29x29 window of ``conn`` (out, in) equals ``code``:
    shape (out - 28, in - 28), entry [r, c] for the window at (r, c)."""
    cells = data_cells().to(conn.device, torch.float32)
    on = check_code(code).to(conn.device, torch.float32) * cells
    off = cells - on
    b = conn.to(torch.float32)[None, None]
    hits = F.conv2d(b, on[None, None]) + F.conv2d(1 - b, off[None, None])
    return hits[0, 0] / cells.sum()


def find_host(source: Mask | nn.Module, code: torch.Tensor,
              layers: Iterable[str] | None = None) -> tuple[SignatureKey, float]:
    """arXiv:2111.00162 step 2b: the (layer, row, col) whose window already agrees with ``code`` on
    most data modules (fewest edits); returns the key and that agreement in [0, 1]."""
    best_key, best = None, -1.0
    for name in host_layers(source, layers):
        agree = window_agreement(connectivity(_host_tensor(source, name)), code)
        value, flat = agree.flatten().max(0)
        if float(value) > best:
            row, col = divmod(int(flat), agree.shape[1])
            best_key, best = SignatureKey(name, row, col), float(value)
    return best_key, best


def _check_key(tensor: torch.Tensor, key: SignatureKey) -> None:
    rows, cols = tensor.shape[:2]
    if not (0 <= key.row <= rows - QR_SIZE and 0 <= key.col <= cols - QR_SIZE):
        raise InputError(f"the window ({key.row}, {key.col}) of size {QR_SIZE} does not fit layer "
                         f"'{key.layer}' of {rows} x {cols} channels")


def embed_signature(mask: Mask, code: torch.Tensor, key: SignatureKey | None = None,
                    layers: Iterable[str] | None = None,
                    generator: torch.Generator | None = None) -> tuple[Mask, SignatureKey]:
    """arXiv:2111.00162 steps 2b-2d: write ``code`` (29x29 bool, e.g. :func:`qr_encode`) into the
    connectivity of a conv mask; returns (new mask, key). Untouched layers are shared, not copied.

    Key: ``key`` or :func:`find_host` over ``layers``. On data modules: code 1 and kernel off ->
    switch on one random position of the kernel; code 0 and kernel on -> zero the whole kernel.
    Function-pattern kernels keep the original mask. The global count of kept entries is then
    restored without changing any kernel's on/off state: surplus entries leave random kernels with
    > 1 entry (the host outside the window first, then the other conv layers, last the window's data
    cells, so the code keeps its multi-entry kernels); missing ones join random kernels that are on
    (code-1 cells of the window first, then the rest of the host, then the other conv layers). So the
    mask's sparsity is identical.
    """
    code = check_code(code)
    key = key or find_host(mask, code, layers)[0]
    host = _host_tensor(mask, key.layer)
    if host.dtype != torch.bool:
        raise InputError(f"mask of layer '{key.layer}' must be a bool tensor, got {host.dtype}")
    _check_key(host, key)
    gen = generator or torch.Generator().manual_seed(0)
    new = host.clone()
    window = new[key.row:key.row + QR_SIZE, key.col:key.col + QR_SIZE].flatten(2)  # view
    cells, on, code_d = data_cells().to(host.device), connectivity(window[..., None]), code.to(host.device)
    turn_on = (cells & code_d & ~on).nonzero()
    pick = torch.randint(window.shape[2], (len(turn_on),), generator=gen, device=gen.device).to(host.device)
    window[turn_on[:, 0], turn_on[:, 1], pick] = True
    window[cells & ~code_d & on] = False
    out = {**mask, key.layer: new}
    diff = int(new.sum()) - int(host.sum())
    window_all, function_cells, code_cells = _host_regions(new, key, code_d)
    others = [k for k, v in mask.items() if k != key.layer and torch.is_tensor(v) and v.dim() == 4]
    passes = [(key.layer, window_all, code_cells), *((k, None, None) for k in others),
              (key.layer, function_cells, None)]
    for name, protected, priority in passes:
        if diff == 0:
            break
        out[name] = out[name] if out[name] is not mask[name] else mask[name].clone()
        diff = _shift_entries(out[name], diff, protected, priority, gen)
    if diff > 0:
        raise InputError(f"layer '{key.layer}' cannot host the signature at the same sparsity: {diff} surplus "
                         "kept entries found no kernel with more than one entry to leave; the mask is too "
                         "sparse there, choose a denser layer or a less pruned mask")
    if diff < 0:
        raise InputError(f"layer '{key.layer}' cannot host the signature at the same sparsity: {-diff} removed "
                         "entries found no free place in the kernels that stay on; the mask is too dense "
                         "(a signature needs a pruned mask), prune it first (e.g. magnitude_prune)")
    return out, key


def _host_regions(tensor: torch.Tensor, key: SignatureKey, code: torch.Tensor):
    """(whole window, function-pattern cells, code-1 data cells) of the host as (out, in) bool."""
    window_all = torch.zeros(tensor.shape[:2], dtype=torch.bool, device=tensor.device)
    function_cells, code_cells = window_all.clone(), window_all.clone()
    window = (slice(key.row, key.row + QR_SIZE), slice(key.col, key.col + QR_SIZE))
    cells = data_cells().to(tensor.device)
    window_all[window], function_cells[window], code_cells[window] = True, ~cells, cells & code
    return window_all, function_cells, code_cells


def _shift_entries(tensor: torch.Tensor, diff: int, protected: torch.Tensor | None,
                   priority: torch.Tensor | None, gen: torch.Generator) -> int:
    """Remove ``diff`` (> 0) or add ``-diff`` (< 0) kept entries of a conv mask in place without
    switching any kernel on or off; returns what is left of ``diff``."""
    flat = tensor.flatten(2)
    counts = flat.sum(2)
    if diff > 0:
        allowed = flat if protected is None else flat & ~protected[..., None]
        candidates = allowed.nonzero()
        order = torch.randperm(len(candidates), generator=gen, device=gen.device).to(tensor.device)
        for j, i, p in candidates[order].tolist():
            if diff == 0:
                break
            if counts[j, i] > 1:
                flat[j, i, p], counts[j, i], diff = False, counts[j, i] - 1, diff - 1
        return diff
    regions = [torch.ones_like(counts, dtype=torch.bool)] if priority is None else [priority, ~priority]
    for region in regions:
        free = ((~flat) & ((counts > 0) & region)[..., None]).nonzero()
        take = free[torch.randperm(len(free), generator=gen, device=gen.device).to(tensor.device)[:-diff]]
        flat[take[:, 0], take[:, 1], take[:, 2]] = True
        diff += len(take)
    return diff


def extract_signature(source: Mask | nn.Module, key: SignatureKey, code: torch.Tensor) -> torch.Tensor:
    """arXiv:2111.00162 step 2f: crop the keyed window of ``source``'s connectivity (a mask, or a
    model whose zero weights are pruned) and restore the function patterns from the owner's
    ``code`` -> (29, 29) bool bits on the source's device."""
    code = check_code(code)
    tensor = _host_tensor(source, key.layer)
    _check_key(tensor, key)
    bits = connectivity(tensor)[key.row:key.row + QR_SIZE, key.col:key.col + QR_SIZE]
    return torch.where(data_cells().to(bits.device), bits, code.to(bits.device))


def read_signature(source: Mask | nn.Module, key: SignatureKey, code: torch.Tensor) -> SignatureReading:
    """Verification (arXiv:2111.00162 step 2f): bit-error rate on data modules and QR decode."""
    bits = extract_signature(source, key, code).cpu()  # a 29x29 readout, decoded by the qrcode library
    cells = data_cells()
    ber = float((bits[cells] != code.cpu()[cells]).float().mean())
    return SignatureReading(key, ber, qr_decode(bits))


def search_signature(source: Mask | nn.Module, code: torch.Tensor, layers: Iterable[str] | None = None,
                     decode_top: int = 5) -> SignatureReading:
    """Ambiguity attack "a code found in a mask" / false-positive test (arXiv:2111.00162): the
    window of every host layer that best matches ``code`` (lowest BER); ``text`` is the first QR
    decode among the ``decode_top`` best windows (None when none decodes)."""
    scored = []
    for name in host_layers(source, layers):
        agree = window_agreement(connectivity(_host_tensor(source, name)), code).flatten()
        top = agree.topk(min(decode_top, agree.numel()))
        width = _host_tensor(source, name).shape[1] - QR_SIZE + 1
        scored += [(float(v), SignatureKey(name, *divmod(int(i), width))) for v, i in zip(*top)]
    scored.sort(key=lambda item: -item[0])
    readings = [read_signature(source, k, code) for _, k in scored[:max(decode_top, 1)]]
    text = next((r.text for r in readings if r.text is not None), None)
    return SignatureReading(readings[0].key, readings[0].ber, text)


@dataclass(frozen=True)
class ForgeryOutcome:
    """Ambiguity attack by forgery: the attacker's code in the forged mask, the owner's code in the
    forged mask, and the attacker's code at the attacker's key in the owner's original mask."""

    forged_mask: Mask
    attacker_in_forged: SignatureReading
    owner_in_forged: SignatureReading
    attacker_in_original: SignatureReading


def forgery_attack(stolen: Mask, owner_key: SignatureKey, owner_code: torch.Tensor,
                   attacker_code: torch.Tensor, layers: Iterable[str] | None = None,
                   generator: torch.Generator | None = None) -> ForgeryOutcome:
    """Ambiguity attack (arXiv:2111.00162): embed ``attacker_code`` into the stolen signed mask at the
    attacker's own best window (the owner's key is secret). The owner wins the dispute when their
    code still reads in the forged mask and the attacker's code does not read in the original."""
    forged, attacker_key = embed_signature(stolen, attacker_code, layers=layers, generator=generator)
    return ForgeryOutcome(forged, read_signature(forged, attacker_key, attacker_code),
                          read_signature(forged, owner_key, owner_code),
                          read_signature(stolen, attacker_key, attacker_code))


def prune_further(model: nn.Module, mask: Mask, extra_sparsity: float) -> Mask:
    """Removal attack (arXiv:2111.00162, repo ``--evaluate-p``): global magnitude pruning of a
    fraction ``extra_sparsity`` in [0, 1) of the weights ``mask`` keeps, over all its layers, by the
    |w| of ``model``. The result is nested in ``mask`` (a pruned entry never returns)."""
    try:
        p = float(extra_sparsity)
    except (TypeError, ValueError):
        raise InputError(f"extra_sparsity must be a number in [0, 1), got {extra_sparsity!r}") from None
    if not 0.0 <= p < 1.0:
        raise InputError(f"extra_sparsity must lie in [0, 1), got {extra_sparsity!r}")
    target = 1.0 - (1.0 - sparsity(mask)) * (1.0 - p)
    return magnitude_prune(model, min(target, 1.0 - 1e-12), "global", current=mask)


# ---------------------------------------------------------------- black-box trigger set
def make_trigger_set(n: int, shape: tuple[int, ...] = (1, 16, 16), num_classes: int = 10,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Abstract trigger images (Adi et al. style; arXiv:2111.00162 scheme 3): x (n, C, H, W) in [0, 1],
    even indices uniform noise, odd ones sine gratings of random angle, period and phase; labels y (n,)
    uniform random in [0, num_classes). Drawn on the generator's device (default: a CPU generator seeded 0)."""
    if not isinstance(n, int) or n < 1 or num_classes < 2 or len(shape) != 3 or min(shape) < 1:
        raise InputError(f"need n >= 1, num_classes >= 2 and shape (C, H, W); got n={n!r}, "
                         f"num_classes={num_classes!r}, shape={shape!r}")
    gen = generator or torch.Generator().manual_seed(0)
    c, h, w = shape
    device = gen.device
    x = torch.rand(n, c, h, w, generator=gen, device=device)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    for k in range(1, n, 2):
        angle, period, phase = torch.rand(3, generator=gen, device=device) * torch.tensor([3.1416, 4.0, 6.2832],
                                                                                       device=device)
        wave = torch.sin((rows * angle.sin() + cols * angle.cos()) * 6.2832 / (2.0 + period) + phase)
        x[k] = (0.5 + 0.5 * wave).expand(c, h, w)
    return x, torch.randint(num_classes, (n,), generator=gen, device=device)


class TriggerMixCallback(Callback):
    """Scheme 3 of arXiv:2111.00162 as a ``honed.core.loop`` callback: every training chunk gets
    ``per_step`` trigger samples appended (cycled in order; card default 1 per step), so one CE loss
    covers clean and trigger images. ``x`` (T, ...) in the model's input domain, ``y`` (T,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, per_step: int = 1) -> None:
        if len(x) != len(y) or len(x) == 0 or per_step < 1:
            raise InputError(f"trigger x and y need the same non-zero length and per_step >= 1; got "
                             f"{len(x)}, {len(y)}, per_step={per_step}")
        self.x, self.y, self.per_step, self.cursor = x, y, per_step, 0

    def on_batch_start(self, state: TrainState) -> None:
        idx = torch.arange(self.cursor, self.cursor + self.per_step, device=self.x.device) % len(self.x)
        self.cursor = (self.cursor + self.per_step) % len(self.x)
        state.x = torch.cat([state.x, self.x[idx].to(state.x.device, state.x.dtype)])
        state.y = torch.cat([state.y, self.y[idx].to(state.y.device)])


def trigger_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     device: str | torch.device | None = None) -> float:
    """Black-box verification (arXiv:2111.00162 scheme 3): the suspect's accuracy on the trigger set
    (owner's model ~1, an independent model ~1/num_classes), on the model's device unless ``device``."""
    return evaluate_classifier(model, x, y, device=device)["accuracy"]
