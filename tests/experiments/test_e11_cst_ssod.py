"""11-cst-ssod: the weak augmentation moves boxes with the pixels; arms share labeled batches."""
from dataclasses import replace

import pytest
import torch

from honed.core.errors import ConfigError
from honed.data.detection_scenes import make_detection_scenes, visible_box
from honed.experiments.e11_cst_ssod import CSTConfig, Sampler, dihedral, labeled_batch


@pytest.mark.parametrize("code", range(8))
def test_every_flip_or_transpose_carries_its_box(code):
    image = torch.zeros(1, 16, 16)
    image[0, 2:6, 9:15] = 1.0  # box x 9-15, y 2-6
    out, boxes = dihedral(image, torch.tensor([[9.0, 2.0, 15.0, 6.0]]), code)
    assert boxes[0].tolist() == visible_box(out[0] > 0).tolist()


def test_labeled_batches_are_seeded_and_match_their_targets():
    cfg = replace(CSTConfig(), image_size=64)
    scenes = make_detection_scenes(4, seed=0)
    a = labeled_batch(scenes, [0, 1, 2], torch.Generator().manual_seed(5), cfg, torch.device("cpu"))
    b = labeled_batch(scenes, [0, 1, 2], torch.Generator().manual_seed(5), cfg, torch.device("cpu"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].heatmap, b[1].heatmap)
    assert int(a[1].mask.sum()) == sum(len(scenes.boxes[i]) for i in range(3))
    sampler = Sampler(5, 3, seed=0)
    drawn = sampler.next() + sampler.next()
    assert sorted(drawn[:5]) == list(range(5))


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="weak_augment"):
        replace(CSTConfig(), weak_augment="crop").validate()
    with pytest.raises(ConfigError, match="threshold"):
        replace(CSTConfig(), threshold=1.5).validate()
