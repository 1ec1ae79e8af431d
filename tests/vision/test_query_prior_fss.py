"""Query-prior FSS head and episodes (card 34, arXiv:2108.05293): prototypes and the PFENet prior by hand,
prior maps independent of the support, the episode sampler, and the standard FSS mIoU by hand."""
import pytest
import torch

from honed.core.errors import InputError
from honed.vision.query_prior_fss import (QueryPriorFSS, class_index, episode_counts, fewshot_miou,
                                          masked_average_pool, sample_episode, support_prototype,
                                          support_query_prior)


def test_masked_average_pool_and_prototype_by_hand():
    features = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: 0 1 / 2 3, channel 1: 4 5 / 6 7
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :] = 1  # the top row of feature cells
    assert masked_average_pool(features, mask).tolist() == [[0.5, 4.5]]
    shots = torch.stack([features[0], features[0] + 10])[None]  # (1, 2, 2, 2, 2)
    masks = torch.stack([mask[0], mask[0]])[None]
    assert support_prototype(shots, masks).tolist() == [[5.5, 9.5]]
    with pytest.raises(InputError, match="no foreground"):
        masked_average_pool(features, torch.zeros(1, 4, 4))
    with pytest.raises(InputError, match="only 0 and 1"):
        masked_average_pool(features, mask * 0.5)


def test_support_query_prior_peaks_where_the_query_matches_the_support():
    s_feat = torch.zeros(1, 1, 2, 2, 2)
    s_feat[0, 0, 0, 0, 0] = 1.0  # the support's foreground pixel points along channel 0
    s_mask = torch.zeros(1, 1, 2, 2)
    s_mask[0, 0, 0, 0] = 1
    q_feat = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]], [[0.0, 1.0], [0.5, 1.0]]]])  # cos 1, 0, 0.707, 0
    prior = support_query_prior(q_feat, s_feat, s_mask)
    assert prior.shape == (1, 1, 2, 2) and prior[0, 0, 0, 0] == 1.0 and prior.min() == 0.0
    assert prior[0, 0, 1, 0].item() == pytest.approx(2 ** -0.5, abs=1e-6)


def test_head_shapes_and_priors_untouched_by_the_support():
    torch.manual_seed(0)
    head = QueryPriorFSS(feat_channels=6, num_priors=3, hidden=4).eval()
    q, s = torch.randn(2, 6, 4, 4), torch.randn(2, 5, 6, 4, 4)
    masks = (torch.rand(2, 5, 16, 16) > 0.5).float()
    priors = torch.rand(2, 3, 4, 4) * 2 - 1
    assert head(q, s, masks, priors).shape == (2, 2, 16, 16)
    embed = head.prior_embed(priors)
    head(q, torch.randn(2, 5, 6, 4, 4), masks, priors)
    assert torch.equal(embed, head.prior_embed(priors))  # the prior path sees the query's maps only
    with pytest.raises(InputError, match="takes 3 prior maps"):
        head(q, s, masks)
    with pytest.raises(InputError, match="takes 0 prior maps"):
        QueryPriorFSS(6)(q, s, masks, priors)


def test_episodes_draw_only_the_given_classes_from_distinct_images():
    labels = torch.zeros(6, 8, 8, dtype=torch.long)
    labels[:4, :5, :5] = 2  # class 2 in images 0-3 (25 px); class 3 in images 4-5; class 1 in image 5 (4 px)
    labels[4:, 4:, 4:] = 3
    labels[5, :2, :2] = 1
    index = class_index(labels, (1, 2, 3), min_pixels=16)
    assert index[1].tolist() == [] and index[2].tolist() == [0, 1, 2, 3] and index[3].tolist() == [4, 5]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        c, query, supports = sample_episode(index, 3, gen)
        assert c == 2 and len({query, *supports}) == 4  # only class 2 has 4 images for a 3-shot episode
    with pytest.raises(InputError, match="shots"):
        sample_episode(index, 0, gen)
    with pytest.raises(InputError, match="no class"):
        sample_episode(index, 4, gen)


def test_fewshot_miou_by_hand():
    pred = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.bool)
    target = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.bool)
    inter, union = episode_counts(pred, target)
    assert inter.tolist() == [1.0] and union.tolist() == [3.0]
    classes = torch.tensor([7, 7, 8])
    # class 7: (1 + 2) / (2 + 2) = 0.75; class 8: 3 / 6 = 0.5 (not the mean of per-episode IoUs)
    assert fewshot_miou(classes, torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 2, 6])) == pytest.approx(0.625)
