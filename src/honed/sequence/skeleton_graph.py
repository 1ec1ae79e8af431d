"""Skeleton-Graph: a spatio-temporal graph CNN that forecasts future 3D poses from observed 2D poses in
one pass (Mohamed, Chen, Wang, Claudel, "Skeleton-Graph: Long-Term 3D Motion Prediction From 2D
Observations Using Deep Spatio-Temporal Graph CNNs", ICCV-W 2021, arXiv:2109.10257).

Shapes: input 2D poses ``x`` (B, T_in, J, 2) in pixels (normalised inside the model by the scalar
``input_mean`` / ``input_std`` of the training 2D values), adjacency (J, J) or (B, T_in, J, J) with the
raw 0/1 limb matrix; output 3D poses (B, T_out, J, 3) in the target's units (metres in the paper).

* :class:`SkeletonGraph` - n_stgcnn :class:`STGCNNLayer` blocks (learned adjacency kernel, (1, 3) time
  conv, graph aggregation, temporal residual block) then the TXP-CNN time extrapolator.
* :func:`graph_aggregate` - the aggregation: ``"official"`` is the reference code's einsum
  ``'bfjy,bsjv->bfjs'`` (per-joint time-summed feature times the learned row-sum of A at each frame: no
  mixing across joints); ``"conventional"`` is the paper text's graph conv sum_v A[s, j, v] x[v, s].
* :func:`forecast_metrics` - MPJPE_q / PATH_q over the first q of the horizon (cumulative), ADE, FDE (as
  coded: the full-horizon average), the classic last-frame FDE, and STB (the paper's divergence metric).
* :func:`skeleton_graph_loss` - MSE plus the optional cosine and limb-length consistency terms.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number

AGGREGATIONS = ("official", "conventional")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def graph_aggregate(x: torch.Tensor, A: torch.Tensor, mode: str = "official") -> torch.Tensor:
    """Skeleton-Graph (arXiv:2109.10257) graph aggregation of features x (B, F, J, Y) with adjacency
    A (B or 1, S, J, J) -> (B, F, J, S); an A of batch 1 is shared by every sample.

    ``official`` (the reference code's ``einsum('bfjy,bsjv->bfjs', x, A)``):
    out[b, f, j, s] = (sum_y x[b, f, j, y]) * (sum_v A[b, s, j, v]) - no mixing across joints.
    ``conventional`` (the paper's text): out[b, f, j, s] = sum_v A[b, s, j, v] x[b, f, v, s] (Y == S)."""
    if x.dim() != 4 or A.dim() != 4 or A.shape[2:] != (x.shape[2], x.shape[2]) or A.shape[0] not in (1, x.shape[0]):
        raise InputError(f"need x (B, F, J, Y) and A (B or 1, S, J, J), got {tuple(x.shape)} and {tuple(A.shape)}")
    if mode == "official":
        return x.sum(dim=-1).unsqueeze(-1) * A.sum(dim=-1).transpose(1, 2).unsqueeze(1)
    if mode == "conventional":
        if x.shape[-1] != A.shape[1]:
            raise InputError(f"conventional aggregation needs x time {x.shape[-1]} == A time {A.shape[1]}")
        return torch.matmul(A, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
    raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def _time_residual(frames: int) -> nn.Sequential:
    """BN over time-as-channels -> PReLU -> 3x3 conv over (J, C) with replicate padding -> BN."""
    return nn.Sequential(nn.BatchNorm2d(frames), nn.PReLU(),
                         nn.Conv2d(frames, frames, 3, padding=1, padding_mode="replicate"),
                         nn.BatchNorm2d(frames))


class STGCNNLayer(nn.Module):
    """Skeleton-Graph (arXiv:2109.10257) ST-GCNN layer: x (B, T, J, C_in), A (B, T, J, J) ->
    (B, T, J, C_out) and the (learned, if ``learn_A``) adjacency kernel (B, T, J, J)."""

    def __init__(self, c_in: int, c_out: int, frames: int, learn_A: bool = True,
                 aggregation: str = "official") -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise InputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.aggregation, self.learn_A = aggregation, learn_A
        pad = (0, 1) if aggregation == "conventional" else 0  # official: time T -> T - 2, no padding
        self.feature_conv = nn.Conv2d(c_in, c_out, (1, 3), padding=pad,
                                      padding_mode="replicate" if aggregation == "conventional" else "zeros")
        self.adjacency_conv = _time_residual(frames) if learn_A else None
        self.temporal = _time_residual(frames)

    def forward(self, x: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adjacency_conv is not None:
            A = self.adjacency_conv(A)
        v = self.feature_conv(x.permute(0, 3, 2, 1))  # [B, C, J, T]
        v = graph_aggregate(v, A, self.aggregation).permute(0, 3, 2, 1)  # [B, T, J, C_out]
        return v + self.temporal(v), A


class TimeExtrapolator(nn.Module):
    """Skeleton-Graph (arXiv:2109.10257) TXP-CNN: (B, T_in, J, C) -> (B, T_out, J, C), time as channels:
    conv T_in->T_out + BN + PReLU, ``blocks - 2`` residual conv + BN + PReLU blocks, a final conv."""

    def __init__(self, t_in: int, t_out: int, blocks: int) -> None:
        super().__init__()
        check_count(blocks, "n_txpcnn", minimum=2)
        self.first = nn.Sequential(nn.Conv2d(t_in, t_out, 3, padding=1), nn.BatchNorm2d(t_out), nn.PReLU())
        self.residual = nn.ModuleList(
            nn.Sequential(nn.Conv2d(t_out, t_out, 3, padding=1), nn.BatchNorm2d(t_out), nn.PReLU())
            for _ in range(blocks - 2))
        self.last = nn.Conv2d(t_out, t_out, 3, padding=1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = self.first(v)
        for block in self.residual:
            v = block(v) + v
        return self.last(v)


class SkeletonGraph(nn.Module):
    """Skeleton-Graph (arXiv:2109.10257): 2D poses (B, t_in, J, in_channels) in pixels -> future 3D
    poses (B, t_out, J, out_channels). ``adjacency`` (J, J) is the raw symmetric 0/1 limb matrix, used
    when ``forward`` gets no A. Inputs are normalised by the scalar ``input_mean`` / ``input_std``
    (set them from the TRAINING 2D values; defaults 0 / 1 mean "already normalised"). BatchNorm acts on
    time-as-channels, so t_in and t_out are fixed at construction. ``device``: where the model lives
    (default: the adjacency's device)."""

    def __init__(self, adjacency: torch.Tensor, t_in: int = 5, t_out: int = 10, n_stgcnn: int = 5,
                 n_txpcnn: int = 11, in_channels: int = 2, out_channels: int = 3, learn_A: bool = True,
                 aggregation: Literal["official", "conventional"] = "official", input_mean: float = 0.0,
                 input_std: float = 1.0, device: str | torch.device | None = None) -> None:
        super().__init__()
        if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise InputError(f"adjacency must be (J, J), got {tuple(adjacency.shape)}")
        for name, value in (("t_in", t_in), ("t_out", t_out), ("n_stgcnn", n_stgcnn),
                            ("in_channels", in_channels), ("out_channels", out_channels)):
            check_count(value, name)
        if t_in < 3 and aggregation == "official":
            raise InputError(f"the official aggregation's (1, 3) time conv needs t_in >= 3, got {t_in}")
        check_number(input_std, "input_std", strict=True)
        self.t_in, self.t_out, self.in_channels = t_in, t_out, in_channels
        device = adjacency.device if device is None else device  # follows its input unless told
        self.register_buffer("adjacency", adjacency.detach().float().to(device))
        self.register_buffer("input_mean", torch.tensor(float(input_mean), device=device))
        self.register_buffer("input_std", torch.tensor(float(input_std), device=device))
        self.layers = nn.ModuleList(
            STGCNNLayer(in_channels if i == 0 else out_channels, out_channels, t_in, learn_A, aggregation)
            for i in range(n_stgcnn))
        self.extrapolator = TimeExtrapolator(t_in, t_out, n_txpcnn)
        self.to(device)

    def _adjacency_batch(self, A: torch.Tensor | None, batch: int) -> torch.Tensor:
        """A shared (J, J) adjacency runs the adjacency branch once, at batch 1, and is broadcast over
        the batch: the same forward and gradients as B identical copies (BatchNorm sees identical
        statistics; only its running-variance n/(n-1) correction differs)."""
        J = self.adjacency.shape[0]
        A = self.adjacency if A is None else A
        if A.dim() == 2 and A.shape == (J, J):
            return A.expand(1, self.t_in, J, J)
        if A.shape != (batch, self.t_in, J, J):
            raise InputError(f"A must be ({J}, {J}) or ({batch}, {self.t_in}, {J}, {J}), got {tuple(A.shape)}")
        if not torch.isfinite(A).all():
            raise InputError("A holds NaN or infinite values")
        return A

    def forward(self, x: torch.Tensor, A: torch.Tensor | None = None) -> torch.Tensor:
        J = self.adjacency.shape[0]
        if x.dim() != 4 or x.shape[1:] != (self.t_in, J, self.in_channels):
            raise InputError(f"x must be (B, {self.t_in}, {J}, {self.in_channels}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("x holds NaN or infinite values")
        v = (x - self.input_mean) / self.input_std
        a = self._adjacency_batch(A, x.shape[0])
        v, a = self.layers[0](v, a)
        for layer in self.layers[1:]:
            v_new, a_new = layer(v, a)
            v, a = v_new + v, a_new + a
        return self.extrapolator(v)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise InputError(f"pred and target must both be (B, T, J, D), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise InputError("pred or target holds NaN or infinite values")


def horizon_frames(steps: int, fraction: float) -> int:
    """Frames in the first ``fraction`` of a ``steps``-frame horizon: max(int(steps * fraction), 1)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must lie in (0, 1], got {fraction}")
    return max(int(steps * fraction), 1)


def mpjpe(pred: torch.Tensor, target: torch.Tensor, fraction: float = 1.0, joint: int | None = None) -> float:
    """Skeleton-Graph (arXiv:2109.10257) MPJPE_q: mean joint L2 error over the first ``fraction`` of
    the horizon (cumulative, all frames from 1 to max(int(T q), 1)); ``joint`` restricts it to one joint
    (PATH_q with the torso joint). pred, target (B, T, J, D); result in their units."""
    _check_pair(pred, target)
    n = horizon_frames(pred.shape[1], fraction)
    err = (pred[:, :n] - target[:, :n]).norm(dim=-1)
    return float(err.mean() if joint is None else err[..., joint].mean())


def mpjpe_per_step(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Skeleton-Graph (arXiv:2109.10257) analysis: mean joint L2 error at each horizon step, (T,) list."""
    _check_pair(pred, target)
    return (pred - target).norm(dim=-1).mean(dim=(0, 2)).tolist()


def stability(mpjpe_q: list[float], path_q: list[float]) -> float:
    """Skeleton-Graph (arXiv:2109.10257) STB = sqrt(Var_q(MPJPE_q) / 2 + Var_q(PATH_q) / 2) (population
    variances over the horizon fractions): 0 when the error does not grow over the horizon."""
    pose, path = torch.tensor(mpjpe_q, dtype=torch.float64), torch.tensor(path_q, dtype=torch.float64)
    return float(torch.sqrt(0.5 * pose.var(unbiased=False) + 0.5 * path.var(unbiased=False)))


def forecast_metrics(pred: torch.Tensor, target: torch.Tensor, torso_joint: int = 13, scale: float = 1000.0,
                     fractions: tuple[float, ...] = FRACTIONS) -> dict[str, float]:
    """Skeleton-Graph (arXiv:2109.10257) evaluation (``train.py`` eval block) of pred / target
    (B, T, J, 3), reported times ``scale`` (metres -> mm): ``mpjpe_<q>``, ``path_<q>`` per fraction,
    ``ade`` = (mean_q MPJPE_q + mean_q PATH_q) / 2, ``fde`` = (MPJPE_1 + PATH_1) / 2 (as coded: a
    full-horizon average), ``fde_last`` (classic: last-frame error of all joints and torso, averaged) and
    ``stb`` (see :func:`stability`). The reference truncates each value to whole mm; this does not."""
    _check_pair(pred, target)
    if not 0 <= torso_joint < pred.shape[2]:
        raise InputError(f"torso_joint must index one of {pred.shape[2]} joints, got {torso_joint}")
    if 1.0 not in fractions:
        raise InputError(f"fractions must include 1.0 (the full horizon), got {fractions}")
    pose = [scale * mpjpe(pred, target, q) for q in fractions]
    path = [scale * mpjpe(pred, target, q, torso_joint) for q in fractions]
    last = (pred[:, -1] - target[:, -1]).norm(dim=-1)
    out = {f"mpjpe_{q:g}": p for q, p in zip(fractions, pose)}
    out.update({f"path_{q:g}": p for q, p in zip(fractions, path)})
    full = fractions.index(1.0)
    out["ade"] = 0.5 * (sum(pose) / len(pose) + sum(path) / len(path))
    out["fde"] = 0.5 * (pose[full] + path[full])
    out["fde_last"] = 0.5 * scale * float(last.mean() + last[:, torso_joint].mean())
    out["stb"] = stability(pose, path)
    return out


def consistency_terms(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Skeleton-Graph (arXiv:2109.10257) consistency terms on (B, T, J, 3):
    cosine = mean_{b,t} sqrt(sum_i |cos(Y_i, Y_{i+1}) - cos(Yhat_i, Yhat_{i+1})|) / J over consecutive
    joints (i, i+1 mod J), cos between the joints' xyz vectors; length = mean over joint pairs i < k of
    | ||Y_i - Y_k|| - ||Yhat_i - Yhat_k|| |."""
    _check_pair(pred, target)
    J = pred.shape[2]
    cos_t = F.cosine_similarity(target, target.roll(-1, dims=2), dim=-1)
    cos_p = F.cosine_similarity(pred, pred.roll(-1, dims=2), dim=-1)
    cosine = (torch.sqrt((cos_t - cos_p).abs().sum(dim=-1) + 1e-12) / J).mean()
    upper = torch.ones(J, J, dtype=torch.bool, device=pred.device).triu(1)
    dist_t = (target.unsqueeze(3) - target.unsqueeze(2)).norm(dim=-1)[..., upper]
    dist_p = (pred.unsqueeze(3) - pred.unsqueeze(2)).norm(dim=-1)[..., upper]
    return cosine, (dist_t - dist_p).abs().mean()


def skeleton_graph_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float = 0.0,
                        length_weight: float = 0.0) -> torch.Tensor:
    """Skeleton-Graph (arXiv:2109.10257) training loss: MSE(pred, target) + cos_weight * cosine term +
    length_weight * limb-length term (see :func:`consistency_terms`; the paper's runs use 0.1 each)."""
    check_number(cos_weight, "cos_weight"), check_number(length_weight, "length_weight")
    loss = F.mse_loss(pred, target)
    if cos_weight or length_weight:
        cosine, length = consistency_terms(pred, target)
        loss = loss + cos_weight * cosine + length_weight * length
    return loss
