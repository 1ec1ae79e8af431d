"""Captioned synthetic shape images for the LSTM conditional GAN reproduction (Ouyang et al., "Generating
Image Sequence from Description with LSTM Conditional GAN", arXiv:1806.03027, card "Reproduction at small
scale"), seeded, in plain torch.

Each image is ``size`` x ``size`` RGB in [0, 1]: one object of shape {circle, square, triangle}, colour
{red, green, blue, yellow}, size {small, big} and position {left, right, top, bottom, centre} on a dark,
slightly noisy background (the shapes are drawn with :func:`honed.data.instance_scenes.shape_mask`).
Its caption comes from one of several templates with different word orders ("one big red circle at the
left", "at the left there is one big red circle", ...); 'a' is written 'one' as in the reference.
Attribute combinations are split into train and held-out test combinations, every attribute value
appearing in both, so a test caption asks for a combination never seen in training.

Words become fixed random Gaussian vectors (a stand-in for word2vec); the sentence vector is the mean of
a caption's word vectors (a stand-in for skip-thought). :func:`encode_captions` refuses an empty caption
or one with no known word in one line.
"""
import itertools
import math
from dataclasses import dataclass

import torch

from honed.core.errors import InputError, check_count
from honed.data.instance_scenes import pixel_grid, shape_mask

ATTRIBUTES = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "big"),
    "position": ("left", "right", "top", "bottom", "centre"),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)
RGB = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1)}
TEMPLATES = (
    "one {size} {colour} {shape} at the {position}",
    "at the {position} there is one {size} {colour} {shape}",
    "one {colour} {shape} that is {size} at the {position}",
    "there is one {size} {shape} coloured {colour} at the {position}",
    "the {shape} at the {position} is {size} and {colour}",
)
MAX_WORDS = 10
VOCABULARY = tuple(sorted({w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
                          | {v for values in ATTRIBUTES.values() for v in values}))


@dataclass(frozen=True)
class CaptionedShapes:
    """Images (N, 3, S, S) in [0, 1]; ``attributes`` (N, 4) long, one column per ATTRIBUTE_NAMES entry;
    ``captions`` N strings; ``word_steps`` (N, 4) long: the 1-based step at which each attribute's word
    appears in the caption."""

    images: torch.Tensor
    attributes: torch.Tensor
    captions: tuple[str, ...]
    word_steps: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)


def split_combinations(held_out: float = 0.2, seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """All attribute-index combinations split into (train, held-out test); every attribute value
    appears in both parts (redrawn until it does)."""
    if not 0 < held_out < 1:
        raise InputError(f"held_out must lie in (0, 1), got {held_out}")
    combos = list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values())))
    gen = torch.Generator().manual_seed(seed)
    n_test = max(1, round(held_out * len(combos)))
    for _ in range(100):
        order = torch.randperm(len(combos), generator=gen).tolist()
        test, train = [combos[i] for i in order[:n_test]], [combos[i] for i in order[n_test:]]
        if all({c[a] for c in part} == set(range(len(v))) for part in (train, test)
               for a, v in enumerate(ATTRIBUTES.values())):
            return sorted(train), sorted(test)
    raise InputError(f"held_out={held_out} leaves some attribute value out of a split; use a smaller fraction")


def draw_image(combo: tuple, size: int, gen: torch.Generator) -> torch.Tensor:
    """One (3, size, size) image of attribute indices ``combo`` (shape, colour, size, position)."""
    shape, colour, big, position = (ATTRIBUTES[a][i] for a, i in zip(ATTRIBUTE_NAMES, combo))
    centre = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
              "centre": (0.5, 0.5)}[position]
    jitter = 0.04 * size * (2 * torch.rand(3, generator=gen) - 1)
    radius = (0.25 if big == "big" else 0.15) * size * (1 + 0.08 * float(jitter[2]) / size)
    xs, ys = pixel_grid(size)
    upright = -math.pi / 4 if shape == "square" else -math.pi / 2  # square sides and triangle apex up
    angle = upright + 0.15 * (2 * float(torch.rand((), generator=gen)) - 1)
    dx, dy = (xs - centre[0] * size - jitter[0]) / radius, (ys - centre[1] * size - jitter[1]) / radius
    u, v = math.cos(angle) * dx + math.sin(angle) * dy, -math.sin(angle) * dx + math.cos(angle) * dy
    mask = shape_mask(shape, u, v)
    background = 0.08 + 0.04 * torch.rand(3, 1, 1, generator=gen) + 0.02 * torch.randn(3, size, size, generator=gen)
    fill = torch.tensor(RGB[colour]).view(3, 1, 1) + 0.05 * torch.randn(3, 1, 1, generator=gen)
    return (background * (1 - mask) + fill * mask).clamp(0, 1)


def caption_of(combo: tuple, template: int) -> tuple[str, list[int]]:
    """The caption of ``combo`` with template ``template`` and the 1-based step of each attribute word."""
    words = {a: ATTRIBUTES[a][i] for a, i in zip(ATTRIBUTE_NAMES, combo)}
    tokens = TEMPLATES[template].split()
    steps = [next(k + 1 for k, tok in enumerate(tokens) if tok == "{" + a + "}") for a in ATTRIBUTE_NAMES]
    return TEMPLATES[template].format(**words), steps


def make_captioned_shapes(n: int, combos: list[tuple], seed: int, size: int = 16) -> CaptionedShapes:
    """``n`` captioned images drawn uniformly from ``combos`` (attribute-index tuples) and templates."""
    check_count(n, "n")
    check_count(size, "size", 8)
    if not combos:
        raise InputError("combos is empty: nothing to draw")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(combos), (n,), generator=gen).tolist()
    templates = torch.randint(len(TEMPLATES), (n,), generator=gen).tolist()
    images, captions, steps = [], [], []
    for pick, template in zip(picks, templates):
        images.append(draw_image(combos[pick], size, gen))
        caption, where = caption_of(combos[pick], template)
        captions.append(caption)
        steps.append(where)
    return CaptionedShapes(torch.stack(images), torch.tensor([combos[p] for p in picks]), tuple(captions),
                           torch.tensor(steps))


def word_vectors(dim: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed random N(0, 1/dim) vector per vocabulary word (stand-in for word2vec)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(VOCABULARY), dim, generator=gen) / math.sqrt(dim)
    return {word: table[i] for i, word in enumerate(VOCABULARY)}


def encode_captions(captions: list[str] | tuple[str, ...], vectors: dict[str, torch.Tensor],
                    max_words: int = MAX_WORDS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions -> (word vectors (N, T, D), word mask (N, T) float, sentence vector (N, D)), T = max_words.
    Words not in ``vectors`` are dropped and captions cut to ``max_words`` (as the reference does); an
    empty caption, or one with no known word, is refused."""
    if isinstance(captions, str) or not captions:
        raise InputError("captions must be a non-empty list of strings")
    dim = len(next(iter(vectors.values())))
    words = torch.zeros(len(captions), max_words, dim)
    mask = torch.zeros(len(captions), max_words)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise InputError(f"caption {i} is empty: an LSTM cGAN needs at least one word")
        tokens = ["one" if w == "a" else w for w in caption.lower().split()]
        known = [vectors[w] for w in tokens if w in vectors][:max_words]
        if not known:
            raise InputError(f"caption {i} ({caption!r}) has no word of the vocabulary")
        words[i, :len(known)] = torch.stack(known)
        mask[i, :len(known)] = 1.0
    sentence = words.sum(1) / mask.sum(1, keepdim=True)
    return words, mask, sentence
