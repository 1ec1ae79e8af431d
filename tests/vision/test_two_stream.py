"""Auto-TSNet (arXiv:2108.12957): the search space, its FLOPs count and the probabilistic search."""
import random

import pytest
import torch

from honed.core.errors import InputError
from honed.core.measure import count_macs
from honed.data.moving_shapes import MOTIONS, NUM_CLASSES, make_clip, make_moving_shapes
from honed.vision.two_stream_search import ArchDistribution, progressive_search, variable_groups
from honed.vision.two_stream_space import (Fusion, FixedArchNet, SlicedBN, TwoStreamNet, TwoStreamSpace, arch_macs,
                                           slowfast_tiny)

SPACE = TwoStreamSpace(frames=4, alpha=2, size=8, num_classes=5)


def random_arch(space, seed):
    rng = random.Random(seed)
    return {v: rng.choice(c) for v, c in space.variables()}


@pytest.mark.parametrize("seed", range(4))
def test_every_sampled_architecture_builds_and_outputs_b_by_classes(seed):
    torch.manual_seed(seed)
    net, clips = TwoStreamNet(SPACE), torch.rand(3, 3, 4, 8, 8)
    arch = random_arch(SPACE, seed)
    assert net(clips, arch).shape == (3, 5)
    for streams in ("both", "slow", "fast"):
        assert FixedArchNet(SPACE, arch, streams)(clips).shape == (3, 5)


def test_flops_count_matches_a_manual_count_for_a_fixed_architecture():
    space = TwoStreamSpace(frames=2, alpha=2, size=8, num_classes=3, slow_stem=2, fast_stem=1, slow_channels=(2,),
                           fast_channels=(1,), temporal=(1,), expansion=(1,), stages=1, blocks=1)
    arch = {v: c[0] for v, c in space.variables()}  # fusion none, attention off
    # stems 2*3*1*9*(1*4*4) + 1*3*3*9*(2*4*4); blocks (2*2 + 2*9 + 2*2)*16 + (1 + 9 + 1)*32; head 3*(2+1)
    manual = 864 + 2592 + 416 + 352 + 9
    assert arch_macs(space, arch) == manual
    assert count_macs(FixedArchNet(space, arch), torch.rand(1, 3, 2, 8, 8)) == manual


@pytest.mark.parametrize("seed", range(6))
def test_modelled_macs_equal_torch_flop_counter_for_random_architectures(seed):
    space = TwoStreamSpace(size=16, num_classes=7)
    clip = torch.rand(1, 3, 16, 16, 16)
    arch = random_arch(space, seed)
    assert count_macs(FixedArchNet(space, arch), clip) == arch_macs(space, arch)
    wide = space.scaled(2)  # the widened single streams of the experiment
    for stream in ("slow", "fast"):
        net = FixedArchNet(wide, random_arch(wide, seed), stream)
        assert count_macs(net, clip) == arch_macs(wide, net.arch, stream)


@pytest.mark.parametrize("kind", ["none", "lateral", "pool"])
def test_fusion_keeps_the_slow_stream_shape(kind):
    fusion = Fusion(cf_max=4, cs_max=16, alpha=4)
    slow, fast = torch.rand(2, 8, 4, 6, 6), torch.rand(2, 2, 16, 6, 6)
    assert fusion(slow, fast, kind).shape == slow.shape


def test_sliced_bn_updates_only_its_slice_of_the_running_stats():
    bn = SlicedBN(6)
    bn(torch.randn(4, 3, 2, 2, 2) + 5)
    assert (bn.running_mean[:3] > 0.1).all() and (bn.running_mean[3:] == 0).all()


def test_probabilities_sum_to_one_and_frozen_variables_are_never_sampled():
    groups = variable_groups(SPACE)
    fixed = {v: "lateral" for v in groups["fusion"]} | {v: "se" for v in groups["attention"]}
    dist = ArchDistribution(SPACE, groups["streams"], fixed)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        arch, picks = dist.sample(gen)
        assert all(arch[v] == value for v, value in fixed.items()) and set(picks) == set(groups["streams"])
    assert all(abs(float(dist.probs(v).sum()) - 1) < 1e-12 for v in dist.searched)
    assert set(dist.logits) == set(groups["streams"])
    with pytest.raises(InputError, match="exactly once"):
        ArchDistribution(SPACE, groups["streams"], {})


def bandit():
    space = TwoStreamSpace(frames=4, alpha=2, size=8, fusions=("none", "lateral", "pool"))
    groups = variable_groups(space)
    fixed = slowfast_tiny(space)
    return ArchDistribution(space, groups["fusion"][:1], {v: a for v, a in fixed.items() if v != "fusion.s0"})


def test_score_function_gradient_is_unbiased_on_a_toy_bandit():
    dist, loss = bandit(), {"none": 1.0, "lateral": 0.2, "pool": 0.6}
    with torch.no_grad():
        dist.logits["fusion.s0"] += torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    p = dist.probs("fusion.s0")
    losses = torch.tensor([loss[c] for c in dist.choices["fusion.s0"]], dtype=torch.float64)
    exact = p * (losses - (p * losses).sum())  # d E[l] / d alpha
    gen, total, draws = torch.Generator().manual_seed(0), torch.zeros(3, dtype=torch.float64), 4000
    for _ in range(draws):
        samples = [dist.sample(gen) for _ in range(3)]
        total += dist.score_function_gradient([s[1] for s in samples], [loss[s[0]["fusion.s0"]] for s in samples])["fusion.s0"]
    assert torch.allclose(total / draws, exact, atol=0.01)


def test_search_reaches_the_known_optimum_of_a_toy_bandit():
    dist, loss = bandit(), {"none": 1.0, "lateral": 0.2, "pool": 0.6}
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        samples = [dist.sample(gen) for _ in range(dist.adaptive_k(1, 4))]
        dist.score_function_step([s[1] for s in samples], [loss[s[0]["fusion.s0"]] for s in samples], lr=1.0)
    assert dist.argmax()["fusion.s0"] == "lateral" and dist.entropy() < 0.5
    assert dist.adaptive_k(1, 4) < 4


def test_progressive_search_runs_its_three_stages_on_one_supernet():
    x, y = torch.rand(8, 3, 4, 8, 8), torch.arange(8) % 5

    def batches():
        while True:
            yield x, y

    out = progressive_search(SPACE, batches(), batches(), (2, 1, 1), target_macs=1e9, seed=0, k_range=(1, 2))
    SPACE.check_arch(out["arch"])
    assert len(out["entropy"]) == 4 and out["weight_updates"] >= 4 and out["cpu_s"] >= 0


def test_videos_and_bad_inputs():
    clips, labels = make_moving_shapes(24, seed=0, frames=8, size=16)
    assert clips.shape == (24, 3, 8, 16, 16) and set(labels.tolist()) == set(range(NUM_CLASSES))
    assert 0 <= clips.min() and clips.max() <= 1
    blink = make_clip(MOTIONS.index("blink"), torch.Generator().manual_seed(0), frames=8, size=16)
    odd_even = (blink[:, 0::2] - blink[:, 1::2]).abs().mean()
    assert odd_even > 0.02  # the shape toggles between consecutive frames
    with pytest.raises(InputError, match="at least 2 frames"):
        make_moving_shapes(4, seed=0, frames=1)
    net = TwoStreamNet(SPACE)
    with pytest.raises(InputError, match="a video of 4 frames"):
        net(torch.rand(2, 3, 1, 8, 8), slowfast_tiny(SPACE))
    with pytest.raises(InputError, match="does not fit"):
        net(torch.rand(2, 3, 4, 8, 8), {"slow.s0.b0.t": 3})
    with pytest.raises(InputError, match="multiple of alpha"):
        TwoStreamSpace(frames=6, alpha=4)


def test_search_moves_cpu_batches_to_the_supernet_device(device):
    """Issue 18: the supernet lives on ``device`` and CPU batches follow it."""
    x, y = torch.rand(8, 3, 4, 8, 8), torch.arange(8) % 5

    def batches():
        while True:
            yield x, y

    out = progressive_search(SPACE, batches(), batches(), (1, 1, 1), target_macs=1e9, seed=0, k_range=(1, 1),
                             device=device)
    SPACE.check_arch(out["arch"])
