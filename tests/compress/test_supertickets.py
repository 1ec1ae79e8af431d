"""SuperTickets (arXiv:2207.03677): the card's invariants on tiny supernets - exact global sparsity,
the 0.1, 0.2, ... schedule, bias folding (the extracted subnet computes what the supernet computes),
branch removal, resource-aware penalty weights by hand, reactivation restoring pre-pruning values,
nested masks without IR, MACs after shrinking - and one clear error per bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F

from honed.compress.masks import is_nested, sparsity
from honed.compress.supernet import (ChoiceBlock, SuperNet, branches, channel_counts, export_plain, get_mask,
                                     penalty_weights, recalibrate_bn, remove_channels, removed_macs, reset_mask,
                                     set_mask, shrink)
from honed.compress.supertickets import (SuperTickets, SuperTicketsSchedule, one_shot_prune,
                                         train_supertickets)
from honed.core.errors import ConfigError, InputError
from honed.core.measure import count_macs


def tiny_net(seed: int = 0, **kw) -> SuperNet:
    torch.manual_seed(seed)
    args = dict(image_size=8, stem_channels=4, block_channels=(4, 6), strides=(1, 2), hidden=5, kernels=(3, 5))
    net = SuperNet(**{**args, **kw})
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- schedule

def test_sparsity_schedule_steps_by_a_tenth_and_caps_at_target():
    s = SuperTicketsSchedule(epochs=30, prune_interval=3, prune_step=0.1, target_sparsity=0.9)
    events = {e + 1: s.sparsity_at(e) for e in range(30) if s.sparsity_at(e) is not None}
    assert list(events) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert list(events.values()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9])
    assert SuperTicketsSchedule(prune=False).sparsity_at(2) is None


def test_rho_is_zero_then_ramps_linearly_then_constant():
    s = SuperTicketsSchedule(rho=0.02, epoch_free=1.0, epoch_warmup=5.0)
    assert s.rho_at(0.5) == 0.0
    assert s.rho_at(1.0) == 0.0
    assert s.rho_at(3.0) == pytest.approx(0.01)
    assert s.rho_at(5.0) == s.rho_at(29.0) == 0.02


# ----------------------------------------------------------------------------- pruning

def test_global_mask_sparsity_equals_the_target_exactly():
    net = tiny_net()
    total = sum(m.numel() for m in get_mask(net).values())
    for target in (0.1, 0.55, 0.9):
        mask = one_shot_prune(net, target)
        assert sparsity(mask) == pytest.approx(round(target * total) / total, abs=0)
        assert sparsity(get_mask(net)) == sparsity(mask)  # loaded into the layers
        # global: one threshold, every kept |w| >= every pruned |w|
        params = dict(net.named_parameters())
        kept = torch.cat([params[k].detach().abs()[v] for k, v in mask.items()])
        pruned = torch.cat([params[k].detach().abs()[~v] for k, v in mask.items()])
        assert kept.min() >= pruned.max()


def test_masks_exclude_bias_and_batchnorm():
    names = set(get_mask(tiny_net()))
    assert names and all(n.endswith(".weight") for n in names)
    assert not any("bn" in n or n.endswith("bias") for n in names)
    assert {"stem.0.weight", "head.weight", "blocks.0.branches.k3.depthwise.weight"} <= names


def _training_run(reactivation: str, steps: int = 3):
    """A SuperTickets callback on a tiny net, driven by hand: prune at 0.5, a few SGD steps."""
    net = tiny_net()
    st = SuperTickets(net, SuperTicketsSchedule(search=False, reactivation=reactivation, weight_decay=1e-2),
                      steps_per_epoch=1, example=images(1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = images(8), torch.arange(8) % 10
    for _ in range(2):  # fill the momentum buffers before pruning
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    mask = st.prune_event(0.5, opt)
    frozen = {k: p.detach().clone() for k, p in net.named_parameters()}
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        st.before_step()
        opt.step()
    return net, st, mask, frozen


def test_pruned_weights_are_frozen_and_reset_restores_their_pre_pruning_values():
    net, _, mask, frozen = _training_run("reset_at_next_event")
    params = dict(net.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(params[name].detach()[~keep], frozen[name][~keep]), name  # momentum + wd gated
    moved = sum(int((params[n].detach()[k] != frozen[n][k]).sum()) for n, k in mask.items())
    assert moved > 0  # kept weights did train
    reset_mask(net)
    assert sparsity(get_mask(net)) == 0.0
    for name, keep in mask.items():
        assert torch.equal(params[name].detach()[~keep], frozen[name][~keep])


def test_reactivation_revives_a_weight_that_outgrows_a_kept_one_and_persistent_masks_do_not():
    for mode in ("reset_at_next_event", "none"):
        net = tiny_net()
        st = SuperTickets(net, SuperTicketsSchedule(search=False, reactivation=mode), 1, images(1))
        first = st.prune_event(0.5, None)
        with torch.no_grad():  # every kept weight of the head shrinks below every pruned one
            head = net.head.weight
            head[first["head.weight"]] = 1e-6
        second = st.prune_event(0.5, None)
        revived = int((second["head.weight"] & ~first["head.weight"]).sum())
        if mode == "none":
            assert is_nested(second, first) and revived == 0
        else:  # the shrunken head weights are now the smallest in the net: all pruned, others return
            assert not (second["head.weight"] & first["head.weight"]).any()
            assert st.trace.events[-1]["revived"] == int(first["head.weight"].sum()) > 0
            assert revived > 0
        assert sparsity(second) == pytest.approx(sparsity(first))


def test_persistent_masks_are_nested_across_rising_sparsity():
    net = tiny_net()
    st = SuperTickets(net, SuperTicketsSchedule(search=False, reactivation="none"), 1, images(1))
    masks = [st.prune_event(s, None) for s in (0.2, 0.4, 0.6)]
    assert is_nested(masks[1], masks[0]) and is_nested(masks[2], masks[1])


def test_reset_after_event_trains_dense_between_events_and_keeps_the_last_mask_as_ticket():
    net = tiny_net()
    st = SuperTickets(net, SuperTicketsSchedule(search=False, reactivation="reset_after_event"), 1, images(1))
    st.prune_event(0.3, None)
    assert sparsity(get_mask(net)) == 0.0
    last = st.prune_event(0.6, None, last=True)
    assert sparsity(get_mask(net)) == pytest.approx(sparsity(last))
    st.on_train_end()
    assert all(torch.equal(get_mask(net)[k], last[k]) for k in last)


# ----------------------------------------------------------------------------- search space and surgery

def test_penalty_weights_are_per_channel_macs_over_their_channel_weighted_mean():
    block = ChoiceBlock(in_channels=2, out_channels=3, hidden=4, kernels=(3, 5), stride=1, in_size=4)
    k3, k5 = block.branches["k3"], block.branches["k5"]
    assert block.channel_macs(k3) == 2 * 16 + 9 * 16 + 3 * 16 == 224
    assert block.channel_macs(k5) == 2 * 16 + 25 * 16 + 3 * 16 == 480
    net = tiny_net()
    weights = penalty_weights(net)
    live = branches(net)
    per_channel = {n: b.channel_macs(br) for n, (b, br) in live.items()}
    ratio = {n: weights[n] / per_channel[n] for n in weights}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()))  # proportional
    counts = channel_counts(net)
    mean = sum(weights[n] * counts[n] for n in weights) / sum(counts.values())
    assert mean == pytest.approx(1.0)
    assert weights["blocks.0.branches.k5"] > weights["blocks.0.branches.k3"]  # bigger kernel costs more


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_removing_zero_gamma_channels_with_bias_folding_leaves_outputs_unchanged(mode):
    net = tiny_net()
    one_shot_prune(net, 0.3)  # folding must use the masked projection weights
    dead = {"blocks.0.branches.k3": [0, 2], "blocks.1.branches.k5": [1, 3, 4]}
    with torch.no_grad():
        for name, idx in dead.items():
            branches(net)[name][1].bn_dw.weight[idx] = 0.0
    x = images()
    net.train(mode == "train")
    with torch.no_grad():
        before = net(x)
    shrunk = copy.deepcopy(net)
    keep = {n: torch.tensor([j for j in range(5) if j not in idx]) for n, idx in dead.items()}
    remove_channels(shrunk, keep)
    assert channel_counts(shrunk)["blocks.0.branches.k3"] == 3
    assert channel_counts(shrunk)["blocks.1.branches.k5"] == 2
    with torch.no_grad():
        after = shrunk(x)
    assert torch.allclose(before, after, atol=1e-5)
    # without folding the outputs change: the test can fail
    unfolded = copy.deepcopy(shrunk)
    with torch.no_grad():
        for block, ref in zip(unfolded.blocks, net.blocks):
            block.bias.copy_(ref.bias)
        assert not torch.allclose(unfolded(x), before, atol=1e-3)


def test_extracted_subnet_shares_the_supernet_weights():
    net = tiny_net().eval()
    keep = {"blocks.1.branches.k3": torch.tensor([1, 4])}
    sub = remove_channels(copy.deepcopy(net), keep)
    ref, new = branches(net)["blocks.1.branches.k3"][1], branches(sub)["blocks.1.branches.k3"][1]
    assert torch.equal(new.expand.weight, ref.expand.weight[[1, 4]])
    assert torch.equal(new.depthwise.weight, ref.depthwise.weight[[1, 4]])
    assert torch.equal(new.project.weight, ref.project.weight[:, [1, 4]])
    assert torch.equal(new.bn_dw.running_var, ref.bn_dw.running_var[[1, 4]])


def test_a_branch_whose_channels_all_die_is_removed_and_outputs_stay():
    net = tiny_net().eval()
    with torch.no_grad():
        branches(net)["blocks.0.branches.k5"][1].bn_dw.weight.zero_()
        before = net(images())
    saved = shrink(net, threshold=1e-3)
    assert "blocks.0.branches.k5" not in channel_counts(net)
    assert "k5" not in net.blocks[0].branches and "k3" in net.blocks[0].branches
    assert saved == 5 * net.blocks[0].channel_macs(net.blocks[0].branches["k3"]) + 5 * (25 - 9) * 64
    with torch.no_grad():
        assert torch.allclose(net(images()), before, atol=1e-5)


def test_mac_counter_drops_by_exactly_the_removed_channels():
    net = tiny_net()
    example = images(1)
    macs_before = count_macs(net, example)
    keep = {"blocks.0.branches.k3": torch.tensor([0]), "blocks.1.branches.k5": torch.tensor([2, 3])}
    expected = removed_macs(net, keep)
    remove_channels(net, keep)
    assert macs_before - count_macs(net, example) == expected > 0


def test_non_residual_block_keeps_its_strongest_channel():
    net = tiny_net()
    with torch.no_grad():
        for name, (_, branch) in branches(net).items():
            if name.startswith("blocks.1."):
                branch.bn_dw.weight.fill_(1e-4)
        branches(net)["blocks.1.branches.k5"][1].bn_dw.weight[3] = 5e-4
    shrink(net, threshold=1e-3)
    assert {k: v for k, v in channel_counts(net).items() if k.startswith("blocks.1.")} == {"blocks.1.branches.k5": 1}


def test_surgery_slices_the_optimizer_state_and_training_continues():
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = images(8), torch.arange(8)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    remove_channels(net, {"blocks.1.branches.k3": torch.tensor([0, 2]), "blocks.0.branches.k5": torch.tensor([])}, opt)
    live = {id(p) for p in net.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == live
    for p, state in opt.state.items():
        assert state["momentum_buffer"].shape == p.shape
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def test_export_plain_computes_the_same_with_real_zeros():
    net = tiny_net().eval()
    mask = one_shot_prune(net, 0.7)
    plain = export_plain(net)
    assert not any(hasattr(m, "weight_mask") for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(images()), net(images()), atol=1e-6)
    zeros = sum(int((dict(plain.named_parameters())[k] == 0).sum()) for k in mask)
    assert zeros >= sum(int((~v).sum()) for v in mask.values())


def test_recalibrate_bn_restores_momentum_and_matches_batch_statistics():
    net = tiny_net()
    x = images(16)
    recalibrate_bn(net, [(x, None)])
    stem_bn = net.stem[1]
    assert stem_bn.momentum == 0.1
    with torch.no_grad():
        h = net.stem[0](x)
    assert torch.allclose(stem_bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)


def test_short_run_shrinks_and_ends_at_the_target_sparsity():
    torch.manual_seed(0)
    net = tiny_net()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    schedule = SuperTicketsSchedule(epochs=4, rho=5.0, epoch_warmup=0.0, nas_interval=1, prune_interval=2,
                                    prune_step=0.4, target_sparsity=0.7, shrink_threshold=0.5)
    st = train_supertickets(net, data, schedule, x[:1], lr=0.1)
    assert sum(channel_counts(net).values()) < 20  # shrunk from 2 blocks x 2 branches x 5
    assert st.trace.macs[-1] < st.trace.macs[0]
    mask = get_mask(net)
    total = sum(v.numel() for v in mask.values())
    assert sparsity(mask) == pytest.approx(round(0.7 * total) / total, abs=0)
    assert [e["target"] for e in st.trace.events if e["kind"] == "prune"] == [0.4, 0.7]


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_one_clear_error():
    net = tiny_net()
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="sparsity"):
            one_shot_prune(net, bad)
    with pytest.raises(ConfigError, match="target_sparsity"):
        SuperTicketsSchedule(target_sparsity=1.0)
    with pytest.raises(ConfigError, match="reactivation"):
        SuperTicketsSchedule(reactivation="sometimes")
    with pytest.raises(InputError, match="blocks.7.branches.k3"):
        remove_channels(net, {"blocks.7.branches.k3": torch.tensor([0])})
    with pytest.raises(InputError, match="distinct indices"):
        remove_channels(net, {"blocks.0.branches.k3": torch.tensor([0, 9])})
    with pytest.raises(InputError, match="no_such.weight"):
        set_mask(net, {"no_such.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(InputError, match=r"\(N, 1, H, W\)"):
        net(torch.rand(2, 3, 8, 8))
    with pytest.raises(InputError, match="kernels"):
        SuperNet(kernels=(3, 4))


def test_supernet_builds_where_asked_and_its_penalty_follows_it():
    """Issue 18: SuperNet(device=...) lives there (torch's default device when None); an empty
    penalty is a zero on the model's device."""
    from honed.compress.supernet import nas_penalty
    from tests.device_checks import META, assert_on
    assert_on(META, *SuperNet(device=META).parameters())
    assert_on("cpu", *SuperNet().parameters())
    bare = SuperNet(device=META)
    bare.blocks = torch.nn.ModuleList()
    assert_on(META, nas_penalty(bare, {}))


def test_recalibrate_bn_moves_cpu_batches_to_the_model_device(device):
    from torch import nn

    from tests.device_checks import assert_on
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), torch.rand(4, 1, 6, 6)
    on_cpu = recalibrate_bn(net, [(x, None)])[1].running_mean.clone()
    recalibrate_bn(net.to(device), [(x, None)])
    assert_on(device, *net.buffers())
    assert torch.allclose(net[1].running_mean.cpu(), on_cpu, atol=1e-6)
