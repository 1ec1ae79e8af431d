"""Font completion through an intermediate graph (Font Completion and Manipulation by Cycling Between
Multi-Modality Representations, arXiv:2108.12965): image -> graph -> image cycle and the image-to-image
baseline with the same encoder and decoder.

* :class:`GlyphEncoder`: glyph image (B, 1, S, S) in [0, 1] (ink = 1) -> style feature (B, style_dim).
* :class:`GraphConstructor`: style feature + TARGET character (B,) long -> graph of N points: features
  (B, N, 4) = (x, y in [0, 1] via sigmoid; unit tangent cos, sin via tanh) and flag logits (B, N, 3)
  (0 = next point on the same contour, 1 = contour end, 2 = padding); 1D transposed convs with
  character-conditional batch norm.
* :class:`GraphEncoder`: graph (features (B, N, 4), flag probabilities (B, N, 3)) -> feature (B, style_dim):
  concat(Linear(features), flag embedding, index embedding) -> 1D conv stack -> mean + max pooling.
* :class:`GlyphDecoder`: feature + target character -> image (B, 1, S, S) in [0, 1] (transposed convs,
  character-conditional BN).
* :class:`FontGraphModel` (img -> graph -> img) and :class:`Img2ImgModel` (img -> img); both map a
  reference glyph of one character to the glyph of a target character in the same style.

Losses (:func:`graph_loss`, image MSE) follow the card: MSE(xy) + MSE(tangent) + CE(flags) for
img -> graph, image MSE for graph -> image and for the cycle. Sizes: S = 4 * 2**len(channels).
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError

N_FLAGS = 3


class CategoricalBatchNorm(nn.Module):
    """Batch norm without affine whose scale and shift are looked up per category (the target
    character): (B, C, ...) and categories (B,) long in [0, num_categories)."""

    def __init__(self, channels: int, num_categories: int, dims: int = 2) -> None:
        super().__init__()
        self.norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels, affine=False)
        self.gamma = nn.Embedding(num_categories, channels)
        self.beta = nn.Embedding(num_categories, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        return self.norm(x) * self.gamma(category).view(shape) + self.beta(category).view(shape)


def check_glyphs(images: torch.Tensor, size: int) -> None:
    if images.dim() != 4 or images.shape[1:] != (1, size, size):
        raise InputError(f"glyph images must be (B, 1, {size}, {size}), got {tuple(images.shape)}")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputError("glyph images must be finite and lie in [0, 1] (ink = 1)")


def check_chars(chars: torch.Tensor, batch: int, num_chars: int) -> None:
    if chars.shape != (batch,) or chars.dtype != torch.long or (chars < 0).any() or (chars >= num_chars).any():
        raise InputError(f"target characters must be ({batch},) long in [0, {num_chars}), got "
                         f"{tuple(chars.shape)} {chars.dtype}")


class GlyphEncoder(nn.Module):
    """Strided conv stack (BN-ReLU) -> linear: (B, 1, S, S) -> (B, style_dim)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), style_dim: int = 64) -> None:
        super().__init__()
        layers, cin = [], 1
        for c in channels:
            layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            cin = c
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.out = nn.Linear(16 * cin, style_dim)
        self.image_size = 4 * 2 ** len(channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_glyphs(images, self.image_size)
        return self.out(self.convs(images))


class GlyphDecoder(nn.Module):
    """Feature (B, in_dim) + target character (B,) -> glyph (B, 1, S, S) in [0, 1]: linear to 4x4 x
    channels[0], then transposed convs x2 with character-conditional BN and ReLU, sigmoid output."""

    def __init__(self, in_dim: int = 64, num_chars: int = 26, channels: tuple[int, ...] = (64, 32, 16)) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, 16 * channels[0])
        self.norms = nn.ModuleList(CategoricalBatchNorm(c, num_chars) for c in channels)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)
                                 for a, b in zip(channels, channels[1:] + (1,)))
        self.channels, self.num_chars = channels, num_chars

    def forward(self, feature: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        check_chars(chars, len(feature), self.num_chars)
        x = self.project(feature).view(len(feature), self.channels[0], 4, 4)
        for norm, up in zip(self.norms, self.ups):
            x = up(F.relu(norm(x, chars)))
        return torch.sigmoid(x)


class GraphConstructor(nn.Module):
    """Graph decoder: style (B, style_dim) + target character (B,) -> (features (B, N, 4), flag logits
    (B, N, 3)); length 8 -> N by stride-2 ConvTranspose1d layers (N = 8 * 2**len(channels)) with
    character-conditional BN, then 1x1 conv heads."""

    def __init__(self, style_dim: int = 64, num_chars: int = 26, channels: tuple[int, ...] = (64, 64, 32)) -> None:
        super().__init__()
        self.project = nn.Linear(style_dim, 8 * channels[0])
        self.norms = nn.ModuleList(CategoricalBatchNorm(c, num_chars, dims=1) for c in channels)
        self.ups = nn.ModuleList(nn.ConvTranspose1d(a, b, 4, stride=2, padding=1)
                                 for a, b in zip(channels, channels[1:] + (channels[-1],)))
        self.refine = nn.Conv1d(channels[-1], channels[-1], 5, padding=2)
        self.coords = nn.Conv1d(channels[-1], 4, 1)
        self.flags = nn.Conv1d(channels[-1], N_FLAGS, 1)
        self.channels, self.num_chars, self.n_points = channels, num_chars, 8 * 2 ** len(channels)

    def forward(self, style: torch.Tensor, chars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_chars(chars, len(style), self.num_chars)
        x = self.project(style).view(len(style), self.channels[0], 8)
        for norm, up in zip(self.norms, self.ups):
            x = up(F.relu(norm(x, chars)))
        x = F.relu(self.refine(F.relu(x)))
        raw = self.coords(x).transpose(1, 2)
        features = torch.cat([torch.sigmoid(raw[..., :2]), torch.tanh(raw[..., 2:])], -1)
        return features, self.flags(x).transpose(1, 2)


class GraphEncoder(nn.Module):
    """Graph (features (B, N, 4), flag probabilities or one-hot (B, N, 3)) -> feature (B, out_dim)."""

    def __init__(self, n_points: int = 64, out_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.coords = nn.Linear(4, width // 2)
        self.flag_embed = nn.Linear(N_FLAGS, width // 4, bias=False)  # soft lookup of a flag embedding
        self.index_embed = nn.Embedding(n_points, width // 4)
        self.convs = nn.Sequential(nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
                                   nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU())
        self.out = nn.Linear(2 * width, out_dim)
        self.n_points = n_points

    def forward(self, features: torch.Tensor, flag_probs: torch.Tensor) -> torch.Tensor:
        b = len(features)
        if features.shape != (b, self.n_points, 4) or flag_probs.shape != (b, self.n_points, N_FLAGS):
            raise InputError(f"graph must be features (B, {self.n_points}, 4) and flags (B, {self.n_points}, "
                             f"{N_FLAGS}); got {tuple(features.shape)} and {tuple(flag_probs.shape)}")
        index = self.index_embed.weight.unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([self.coords(features), self.flag_embed(flag_probs), index], -1).transpose(1, 2)
        x = self.convs(x)
        return self.out(torch.cat([x.mean(2), x.amax(2)], 1))


def _depth(value: int, base: int, name: str) -> int:
    depth = (value // base).bit_length() - 1
    if value < 2 * base or base * 2 ** depth != value:
        raise InputError(f"{name} must be {base} x a power of two >= 2, got {value}")
    return depth


class Img2ImgModel(nn.Module):
    """The image-to-image baseline (arXiv:2108.12965 repo's img2img): encoder -> character-conditional
    decoder. forward(reference (B, 1, S, S), target chars (B,)) -> glyph (B, 1, S, S)."""

    def __init__(self, image_size: int = 32, num_chars: int = 26, style_dim: int = 64,
                 widths: tuple[int, ...] | None = None) -> None:
        super().__init__()
        depth = _depth(image_size, 4, "image_size")
        widths = widths or tuple(min(64, 16 * 2 ** i) for i in range(depth))
        if len(widths) != depth:
            raise InputError(f"widths needs {depth} entries for {image_size}px glyphs, got {widths}")
        self.encoder = GlyphEncoder(widths, style_dim)
        self.decoder = GlyphDecoder(style_dim, num_chars, tuple(reversed(widths)))
        self.image_size, self.num_chars, self.style_dim, self.widths = image_size, num_chars, style_dim, widths

    def forward(self, reference: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(reference), chars)


class FontGraphModel(Img2ImgModel):
    """Image -> graph -> image (arXiv:2108.12965): the baseline's encoder and decoder with a graph
    constructor and a graph encoder in between. forward(reference, target chars) -> (glyph (B, 1, S, S),
    graph features (B, N, 4), flag logits (B, N, 3))."""

    def __init__(self, image_size: int = 32, num_chars: int = 26, style_dim: int = 64, n_points: int = 64,
                 widths: tuple[int, ...] | None = None) -> None:
        super().__init__(image_size, num_chars, style_dim, widths)
        layers = _depth(n_points, 8, "n_points")
        self.constructor = GraphConstructor(style_dim, num_chars, (64,) * (layers - 1) + (32,))
        self.graph_encoder = GraphEncoder(n_points, style_dim)
        self.n_points = n_points

    def graph(self, reference: torch.Tensor, chars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img -> graph: (features (B, N, 4), flag logits (B, N, 3)) of the target characters."""
        return self.constructor(self.encoder(reference), chars)

    def render(self, features: torch.Tensor, flag_probs: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        """graph -> img: flag probabilities (or one-hot flags) (B, N, 3)."""
        return self.decoder(self.graph_encoder(features, flag_probs), chars)

    def forward(self, reference: torch.Tensor, chars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, logits = self.graph(reference, chars)
        return self.render(features, logits.softmax(-1), chars), features, logits


def graph_loss(features: torch.Tensor, flag_logits: torch.Tensor, true_features: torch.Tensor,
               true_flags: torch.Tensor) -> torch.Tensor:
    """img -> graph loss of the card: MSE(x, y) + MSE(tangent) + CE(flags); shapes (B, N, 4), (B, N, 3),
    (B, N, 4), (B, N) long."""
    if features.shape != true_features.shape or true_flags.shape != features.shape[:2]:
        raise InputError(f"graph shapes differ: {tuple(features.shape)} vs {tuple(true_features.shape)} / "
                         f"{tuple(true_flags.shape)}")
    return (F.mse_loss(features[..., :2], true_features[..., :2])
            + F.mse_loss(features[..., 2:], true_features[..., 2:])
            + F.cross_entropy(flag_logits.reshape(-1, N_FLAGS), true_flags.reshape(-1)))


def one_hot_flags(flags: torch.Tensor) -> torch.Tensor:
    """(B, N) long flags -> (B, N, 3) float one-hot (ground-truth graphs for the graph encoder)."""
    return F.one_hot(flags, N_FLAGS).float()


def contour_count(flag_logits: torch.Tensor) -> torch.Tensor:
    """Number of contour ends (argmax flag == 1) per predicted graph: (B, N, 3) -> (B,) long."""
    return (flag_logits.argmax(-1) == 1).sum(-1)


@torch.no_grad()
def complete_font(model: nn.Module, reference: torch.Tensor, chars: torch.Tensor) -> dict[str, torch.Tensor]:
    """Completion from one reference glyph (1, 1, S, S): every target character of ``chars`` (K,) long.
    Returns {"images": (K, 1, S, S)} and, for a :class:`FontGraphModel`, "features" (K, N, 4) and
    "flag_logits" (K, N, 3): the editable graphs. Runs in eval mode and restores the model's modes."""
    from honed.core.modes import eval_mode

    if reference.dim() != 4 or len(reference) != 1:
        raise InputError(f"reference must be one glyph (1, 1, S, S), got {tuple(reference.shape)}")
    check_chars(chars, len(chars), model.num_chars)
    refs = reference.expand(len(chars), -1, -1, -1)
    with eval_mode(model):
        if isinstance(model, FontGraphModel):
            images, features, logits = model(refs, chars)
            return {"images": images, "features": features, "flag_logits": logits}
        return {"images": model(refs, chars)}


@torch.no_grad()
def move_points(model: FontGraphModel, features: torch.Tensor, flag_logits: torch.Tensor, char: int,
                points: list[int], offset: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Local editing through the graph: move ``points`` (indices into one glyph's N points, features
    (N, 4), flag logits (N, 3)) by ``offset`` = (dx, dy) in glyph units ([0, 1] box, y up) and re-render
    with graph -> image. Returns (edited features (N, 4), image (1, S, S))."""
    from honed.core.modes import eval_mode

    n = model.n_points
    if features.shape != (n, 4) or flag_logits.shape != (n, N_FLAGS):
        raise InputError(f"one glyph's graph is features ({n}, 4) and flag logits ({n}, {N_FLAGS}); got "
                         f"{tuple(features.shape)} and {tuple(flag_logits.shape)}")
    if not points or any(not isinstance(i, int) or not 0 <= i < n for i in points) or len(offset) != 2:
        raise InputError(f"points must be a non-empty list of indices in [0, {n}) and offset (dx, dy)")
    edited = features.clone()
    shift = torch.tensor(offset, dtype=features.dtype, device=features.device)
    edited[points, :2] = (edited[points, :2] + shift).clamp(0, 1)
    target = torch.tensor([char], device=features.device)
    with eval_mode(model):
        image = model.render(edited[None], flag_logits.softmax(-1)[None], target)
    return edited, image[0]


@torch.no_grad()
def interpolate_styles(model: FontGraphModel, glyph_a: torch.Tensor, glyph_b: torch.Tensor, char: int,
                       alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Style interpolation: style features of two reference glyphs (1, 1, S, S) mixed as
    (1 - alpha) f_a + alpha f_b for each alpha (A,) in [0, 1], decoded to graphs and glyphs of ``char``.
    Returns {"images": (A, 1, S, S), "features": (A, N, 4), "flag_logits": (A, N, 3)}."""
    from honed.core.modes import eval_mode

    if alphas.dim() != 1 or len(alphas) == 0 or alphas.min() < 0 or alphas.max() > 1:
        raise InputError("alphas must be a non-empty 1-D tensor in [0, 1]")
    chars = torch.full((len(alphas),), char, dtype=torch.long, device=alphas.device)
    check_chars(chars, len(alphas), model.num_chars)
    with eval_mode(model):
        styles = model.encoder(torch.cat([glyph_a, glyph_b]))
        mixed = (1 - alphas[:, None]) * styles[:1] + alphas[:, None] * styles[1:]
        features, logits = model.constructor(mixed, chars)
        images = model.render(features, logits.softmax(-1), chars)
    return {"images": images, "features": features, "flag_logits": logits}
