"""05-ssdda-seg: labeled batches flip images and maps together and are seeded; bad configs refused."""
from dataclasses import replace

import pytest
import torch

from honed.core.errors import ConfigError
from honed.data.segmentation_scenes import make_segmentation_scenes
from honed.experiments.e05_ssdda_seg import SSDDAConfig, draw


def test_batches_are_seeded_and_flip_images_with_their_maps():
    scenes = make_segmentation_scenes(6, seed=0)
    flipped = 0
    for seed in range(8):
        x, y = draw(scenes, 4, torch.Generator().manual_seed(seed))
        x2, y2 = draw(scenes, 4, torch.Generator().manual_seed(seed))
        assert torch.equal(x, x2) and torch.equal(y, y2)
        matches = [any(torch.equal(y[i], scenes.y[j]) and torch.equal(x[i], scenes.x[j]) for j in range(6))
                   for i in range(4)]
        mirrored = [any(torch.equal(y[i], scenes.y[j].flip(-1)) and torch.equal(x[i], scenes.x[j].flip(-1))
                        for j in range(6)) for i in range(4)]
        assert all(matches) or all(mirrored)
        flipped += not all(matches)
    assert 0 < flipped < 8


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="n_target_unlabeled"):
        replace(SSDDAConfig(), n_target_unlabeled=1).validate()
    with pytest.raises(ConfigError, match="divisible"):
        replace(SSDDAConfig(), size=30).validate()
