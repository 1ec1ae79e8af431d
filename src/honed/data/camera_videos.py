"""Offline videos with known motion for the MVStylizer reproduction (MVStylizer, arXiv:2005.11630, card
"Reproduction at small scale"): camera paths (pan, zoom, rotation) over the photos that ship with
scikit-learn and scikit-image, and moving shapes on a panning textured background.

Every clip is a float tensor (T, 3, size, size) in [0, 1]; the same (photo, seed, frames, size) always
gives the same clip. scikit-image photos need the ``video`` extra; the two scikit-learn photos do not.
"""
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.errors import InputError, check_count, require_extra
from honed.data.instance_scenes import uniform
from honed.data.shape_scenes import shape_region

SKLEARN_PHOTOS = ("china", "flower")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
PHOTOS = SKLEARN_PHOTOS + SKIMAGE_PHOTOS
SHAPES = "shapes"  # the procedural domain: moving shapes on a textured background


@lru_cache(maxsize=None)
def _photo_array(name: str) -> np.ndarray:
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name in SKIMAGE_PHOTOS:
        data = require_extra("skimage.data", "video")
        return getattr(data, name)()
    raise InputError(f"unknown photo '{name}'; choose one of {', '.join(PHOTOS)}")


def load_photo(name: str) -> torch.Tensor:
    """One shipped colour photo as (3, H, W) float32 in [0, 1] (names in ``PHOTOS``)."""
    return torch.from_numpy(np.array(_photo_array(name)[..., :3])).permute(2, 0, 1).float() / 255


def _check_clip_args(frames: int, size: int) -> None:
    if check_count(frames, "frames") < 2:
        raise InputError(f"a video needs at least 2 frames, got frames={frames}")
    if check_count(size, "size") < 16:
        raise InputError(f"size must be >= 16 pixels, got {size}")


def camera_path_clip(photo: torch.Tensor, frames: int, size: int, seed: int,
                     max_speed: float = 0.012, max_zoom: float = 0.25, max_turn: float = 0.12) -> torch.Tensor:
    """A (frames, 3, size, size) clip of a virtual camera moving over ``photo`` (3, H, W) in [0, 1].

    The camera's centre moves at a constant velocity of up to ``max_speed`` of the photo per frame, its
    window zooms by up to ``max_zoom`` (relative) and turns by up to ``max_turn`` radians over the clip,
    all drawn from ``seed``; the window stays inside the photo. Frames are resampled bilinearly."""
    _check_clip_args(frames, size)
    if photo.dim() != 3 or photo.shape[0] != 3 or min(photo.shape[1:]) < 16:
        raise InputError(f"photo must be (3, H, W) with H, W >= 16, got {tuple(photo.shape)}")
    gen = torch.Generator().manual_seed(seed)
    height, width = photo.shape[1:]
    aspect = height / width
    half0, half1 = uniform(gen, 0.45, 0.6), None  # window half-size, fraction of the photo's short side
    half1 = half0 * (1 + uniform(gen, -max_zoom, max_zoom))
    turn0 = uniform(gen, -max_turn, max_turn) / 2
    turn1 = turn0 + uniform(gen, -max_turn, max_turn)
    angle = uniform(gen, 0, 2 * math.pi)
    speed = uniform(gen, 0.4, 1.0) * max_speed * 2  # normalised coordinates span 2
    velocity = torch.tensor([math.cos(angle), math.sin(angle)]) * speed
    grids = []
    for t in range(frames):
        s = t / (frames - 1)
        half, turn = half0 + (half1 - half0) * s, turn0 + (turn1 - turn0) * s
        reach = half * math.sqrt(2)  # a turned window's corners stay inside
        centre = (velocity * (t - (frames - 1) / 2)).clamp(-(1 - reach), 1 - reach)
        cos, sin = math.cos(turn) * half, math.sin(turn) * half
        theta = torch.tensor([[cos * aspect, -sin * aspect, float(centre[0])], [sin, cos, float(centre[1])]])
        grids.append(F.affine_grid(theta[None], [1, 3, size, size], align_corners=False))
    grid = torch.cat(grids)
    return F.grid_sample(photo[None].expand(frames, -1, -1, -1), grid, mode="bilinear",
                         padding_mode="border", align_corners=False).clamp(0, 1)


def fractal_texture(size: int, gen: torch.Generator, octaves: int = 5) -> torch.Tensor:
    """(3, size, size) colour texture in [0, 1]: random noise at ``octaves`` scales (4, 8, 16... cells
    across, bicubic-upsampled, amplitude halving per octave). Not periodic, so optical flow can follow
    it (a sine grating cannot be tracked along its stripes)."""
    total = torch.zeros(3, size, size)
    for octave in range(octaves):
        cells = min(size, 4 * 2 ** octave)
        noise = torch.rand(1, 3, cells, cells, generator=gen)
        total += 0.5 ** octave * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0]
    total = (total - total.mean()) / (total.std() + 1e-8)
    return (0.5 + 0.18 * total).clamp(0, 1)


def moving_shapes_clip(frames: int, size: int, seed: int, shapes: tuple[int, int] = (3, 5),
                       max_speed: float = 2.0) -> torch.Tensor:
    """A (frames, 3, size, size) clip of 3-5 disks / squares / triangles / bars moving at constant
    velocity (up to ``max_speed`` px per frame, turning slowly) over a textured background that pans by
    up to half that speed; later shapes occlude earlier ones."""
    _check_clip_args(frames, size)
    gen = torch.Generator().manual_seed(seed)
    margin = int(math.ceil(max_speed * frames / 2)) + 2
    canvas = fractal_texture(size + 2 * margin, gen)
    pan = torch.tensor([uniform(gen, -1, 1), uniform(gen, -1, 1)]) * max_speed / 2
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    objects = []
    for _ in range(int(torch.randint(shapes[0], shapes[1] + 1, (1,), generator=gen))):
        objects.append(dict(kind=int(torch.randint(1, 5, (1,), generator=gen)),
                            radius=uniform(gen, 0.06, 0.14) * size, colour=torch.rand(3, 1, generator=gen),
                            start=torch.rand(2, generator=gen) * size, angle=uniform(gen, 0, 2 * math.pi),
                            spin=uniform(gen, -0.05, 0.05),
                            velocity=(torch.rand(2, generator=gen) * 2 - 1) * max_speed))
    clip = []
    for t in range(frames):
        shift = (pan * (t - (frames - 1) / 2)).round().long() + margin
        frame = canvas[:, shift[1]:shift[1] + size, shift[0]:shift[0] + size].clone()
        for obj in objects:
            cx, cy = (obj["start"] + obj["velocity"] * t).tolist()
            angle = obj["angle"] + obj["spin"] * t
            dx, dy = xx - cx, yy - cy
            u, v = dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)
            region = shape_region(obj["kind"], u, v, obj["radius"])
            frame[:, region] = obj["colour"].expand(3, int(region.sum()))
        clip.append(frame)
    return torch.stack(clip).clamp(0, 1)


def domain_clip(domain: str, frames: int, size: int, seed: int) -> torch.Tensor:
    """A clip of ``domain``: a photo name of ``PHOTOS`` (camera path over it) or ``"shapes"``."""
    if domain == SHAPES:
        return moving_shapes_clip(frames, size, seed)
    return camera_path_clip(load_photo(domain), frames, size, seed)
