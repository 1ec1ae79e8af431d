"""Baselines that Skeleton-Graph (Skeleton-Graph: Long-Term 3D Motion Prediction From 2D Observations
Using Deep Spatio-Temporal Graph CNNs, arXiv:2109.10257) is measured against on 2D -> future 3D pose
forecasting: input (B, T_in, J, 2) pixels, output (B, T_out, J, 3) camera-frame metres.

* :class:`PoseMLP` - flatten T_in x J x 2 -> hidden ReLU layers -> T_out x J x 3.
* :class:`PoseGRUSeq2Seq` - GRU encoder over the observed frames, autoregressive GRU-cell decoder that feeds
  back its own previous 3D pose and predicts the next one as a residual (no teacher forcing).
* :class:`LiftConstantVelocity` - analytic: lift each observed frame to 3D at a depth from the 2D skeleton
  size (depth * 2D size calibrated as a training mean), then move the last lifted pose at the observed
  mean root velocity.
"""
import torch
from torch import nn

from honed.core.errors import InputError, check_count, check_number
from honed.sequence.skeleton_data import FOCAL_PX, GTA_IM_LIMBS, unproject


def _check_input(x: torch.Tensor, t_in: int, joints: int) -> None:
    if x.dim() != 4 or x.shape[1:] != (t_in, joints, 2):
        raise InputError(f"x must be (B, {t_in}, {joints}, 2), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("x holds NaN or infinite values")


class PoseMLP(nn.Module):
    """Skeleton-Graph (arXiv:2109.10257) MLP baseline: (B, t_in, J, 2) pixels -> (B, t_out, J, 3); inputs
    normalised by the scalar training ``input_mean`` / ``input_std``."""

    def __init__(self, t_in: int = 5, t_out: int = 10, joints: int = 21, hidden: tuple[int, ...] = (256, 256),
                 input_mean: float = 0.0, input_std: float = 1.0, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.t_in, self.t_out, self.joints = t_in, t_out, joints
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(check_number(input_std, "input_std", strict=True)))
        sizes = (t_in * joints * 2, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], t_out * joints * 3))
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.t_in, self.joints)
        z = ((x - self.input_mean) / self.input_std).flatten(1)
        return self.net(z).view(-1, self.t_out, self.joints, 3)


class PoseGRUSeq2Seq(nn.Module):
    """Skeleton-Graph (arXiv:2109.10257) recurrent baseline: GRU encoder over (B, t_in, J*2) normalised
    2D frames; the first 3D pose is a linear read-out of the encoder state, each later one is the previous
    pose plus a read-out of a GRU cell fed that previous (predicted) pose. Output (B, t_out, J, 3)."""

    def __init__(self, t_in: int = 5, t_out: int = 10, joints: int = 21, hidden: int = 128,
                 input_mean: float = 0.0, input_std: float = 1.0, device: str | torch.device | None = None) -> None:
        super().__init__()
        check_count(hidden, "hidden")
        self.t_in, self.t_out, self.joints = t_in, t_out, joints
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(check_number(input_std, "input_std", strict=True)))
        self.encoder = nn.GRU(joints * 2, hidden, batch_first=True)
        self.first_pose = nn.Linear(hidden, joints * 3)
        self.decoder = nn.GRUCell(joints * 3, hidden)
        self.step = nn.Linear(hidden, joints * 3)
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.t_in, self.joints)
        z = ((x - self.input_mean) / self.input_std).flatten(2)
        _, h = self.encoder(z)
        h = h[0]
        pose = self.first_pose(h)
        poses = [pose]
        for _ in range(self.t_out - 1):
            h = self.decoder(pose, h)
            pose = pose + self.step(h)
            poses.append(pose)
        return torch.stack(poses, dim=1).view(-1, self.t_out, self.joints, 3)


def skeleton_size_px(x2d: torch.Tensor, limbs=GTA_IM_LIMBS) -> torch.Tensor:
    """Sum of the 2D limb lengths of each frame: (..., J, 2) pixels -> (...)."""
    i = torch.tensor([a for a, _ in limbs], device=x2d.device)
    k = torch.tensor([b for _, b in limbs], device=x2d.device)
    return (x2d[..., i, :] - x2d[..., k, :]).norm(dim=-1).sum(dim=-1)


class LiftConstantVelocity:
    """Skeleton-Graph (arXiv:2109.10257) analytic baseline "lift last frame + constant velocity".

    ``fit(x2d, x3d)`` calibrates kappa = mean over training frames of (mean joint depth * 2D skeleton size);
    ``predict(x2d)`` lifts every observed frame at depth kappa / size (all joints at that depth), takes the
    mean velocity of the lifted joint centroid over the observed frames, and moves the last lifted pose at
    that velocity. x2d (B, T_in, J, 2) pixels -> (B, t_out, J, 3) metres."""

    def __init__(self, t_out: int = 10, focal: float = FOCAL_PX) -> None:
        self.t_out, self.focal, self.kappa = check_count(t_out, "t_out"), focal, None

    def fit(self, x2d: torch.Tensor, x3d: torch.Tensor) -> "LiftConstantVelocity":
        if x2d.shape[:-1] != x3d.shape[:-1] or x2d.shape[-1] != 2 or x3d.shape[-1] != 3:
            raise InputError(f"need x2d (..., J, 2) and x3d (..., J, 3), got {tuple(x2d.shape)}, {tuple(x3d.shape)}")
        self.kappa = float((x3d[..., 2].mean(dim=-1) * skeleton_size_px(x2d)).mean())
        return self

    def lift(self, x2d: torch.Tensor) -> torch.Tensor:
        """(B, T, J, 2) pixels -> (B, T, J, 3) metres at the size-based depth of each frame."""
        if self.kappa is None:
            raise InputError("call fit(x2d, x3d) on training data first")
        depth = self.kappa / skeleton_size_px(x2d).clamp_min(1e-6)
        return unproject(x2d, depth.unsqueeze(-1).expand(x2d.shape[:-1]), self.focal)

    def predict(self, x2d: torch.Tensor) -> torch.Tensor:
        lifted = self.lift(x2d)
        centroid = lifted.mean(dim=2)  # (B, T, 3)
        velocity = (centroid[:, -1] - centroid[:, 0]) / max(x2d.shape[1] - 1, 1)
        steps = torch.arange(1, self.t_out + 1, dtype=x2d.dtype, device=x2d.device)
        return lifted[:, -1:, :, :] + steps[None, :, None, None] * velocity[:, None, None, :]
