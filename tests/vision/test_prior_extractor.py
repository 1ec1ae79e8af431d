"""Prior extractor of query-prior FSS (card 34, arXiv:2108.05293): the card's honest unit tests - superpixels
follow their pixels through crop and flip, local InfoNCE positives are the diagonal, prior maps in [-1, 1]
from the query alone - and oracle values on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.vision.prior_extractor import (PriorExtractor, extractor_loss, fit_priors, grid_segments, info_nce,
                                          local_infonce, prior_maps, random_views, region_embeddings, slic_segments)


@given(st.integers(0, 10_000))
@settings(max_examples=20)
def test_segments_follow_their_pixels_through_crop_and_flip(seed):
    h, w = 12, 16
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.stack([rows / h, cols / w, torch.zeros(h, w)])[None].expand(2, 3, h, w).clone()
    segments = (rows * w + cols)[None].expand(2, h, w).clone()  # one id per source pixel
    view_a, seg_a, view_b, seg_b = random_views(images, segments, torch.Generator().manual_seed(seed),
                                                photometric=False)
    for view, seg in ((view_a, seg_a), (view_b, seg_b)):
        source_id = (view[:, 0] * h).round().long() * w + (view[:, 1] * w).round().long()
        assert torch.equal(seg, source_id)  # the id each view pixel carries is that of the pixel it shows


def test_info_nce_oracle_and_diagonal_positives():
    eye = torch.eye(2)
    assert float(info_nce(eye, eye, tau=1.0)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    a = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    matched, shuffled = info_nce(a, a, tau=0.05), info_nce(a, a.roll(1, 0), tau=0.05)
    assert float(matched) < 0.1 < float(shuffled)  # row i of b is the positive of row i of a


def test_region_embeddings_by_hand():
    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # (1, 1, 2, 2)
    segments = torch.zeros(1, 4, 4, dtype=torch.long)
    segments[0, :, 3:] = 1  # region 1: the last column; region 0 the rest
    emb, cov = region_embeddings(features, segments, 2)
    # region 0 covers cells (0,0), (1,0) fully and half of (0,1), (1,1): (1 + 5 + 1.5 + 3.5) / 3
    assert emb[0, 0, 0].item() == pytest.approx(11 / 3) and emb[0, 1, 0].item() == pytest.approx(5.0)
    assert cov[0].tolist() == [3.0, 1.0]


def test_local_loss_uses_regions_seen_in_both_views():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(2, 4, 4, 4), dim=1)
    segs = grid_segments(2, 8, 8, 2)
    same = local_infonce(feats, segs, feats, segs, tau=0.05)
    assert float(same) < 0.5  # identical views: each region's positive is itself
    with pytest.raises(InputError, match="fewer than two regions"):
        one_region = torch.zeros(1, 8, 8, dtype=torch.long)
        local_infonce(feats[:1], one_region, feats[:1], one_region)


def test_slic_superpixels_respect_a_colour_edge():
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, :, :16] = 1.0  # red left half, black right half
    segments = slic_segments(image, n_segments=8)
    assert segments.shape == (1, 32, 32) and int(segments.max()) >= 1
    for s in torch.unique(segments):
        side = (segments[0] == s).nonzero()[:, 1] < 16
        assert bool(side.all()) or not bool(side.any())  # no superpixel crosses the edge


def test_extractor_modes_priors_and_maps():
    torch.manual_seed(0)
    net = PriorExtractor(width=4, dim=8)
    images = torch.rand(4, 3, 16, 16)
    segments = grid_segments(4, 16, 16, 2)
    gen = torch.Generator().manual_seed(0)
    both = extractor_loss(net, images, segments, gen)
    assert both["loss"].requires_grad and float(both["local"]) > 0
    glob = extractor_loss(net, images, segments, gen, mode="global")
    assert float(glob["local"]) == 0 and torch.allclose(glob["loss"], glob["global"])
    net.train()
    priors = fit_priors(net, images, segments, k=3)
    assert priors.shape == (3, 8) and torch.allclose(priors.norm(dim=1), torch.ones(3), atol=1e-5)
    maps = prior_maps(net, images, priors)
    assert maps.shape == (4, 3, 4, 4) and not maps.requires_grad and net.training  # modes restored
    assert float(maps.min()) >= -1 and float(maps.max()) <= 1
    with torch.no_grad():
        pixel = F.normalize(net.eval()(images[:1]), dim=1)[0, :, 1, 2]
    assert maps[0, 0, 1, 2].item() == pytest.approx(float(pixel @ priors[0]), abs=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="segments"):
        random_views(torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 4, dtype=torch.long), torch.Generator())
    with pytest.raises(InputError, match="mode"):
        extractor_loss(PriorExtractor(), torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long),
                       torch.Generator(), mode="local")
    with pytest.raises(InputError, match="RGB"):
        slic_segments(torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="divisible by 4"):
        PriorExtractor()(torch.rand(1, 3, 10, 10))
