"""FFConv (arXiv:2102.03494) slot simulator: rotations, DensePack / ConvPack against F.conv2d, closed-form
op counts on hand-sized layers, square / pooling / layout steps and whole-network plans against torch."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.private import he_packing as hp
from honed.private.ffconv import Square, convert_to_ffconv
from honed.private.he_plan import encrypted_forward


def raster_channels(sim, x):
    """(B, C, H, W) -> Packed with one ciphertext per channel at raster slots."""
    c, h, w = x.shape[1:]
    cts = [sim.encrypt(x[:, i].reshape(len(x), -1)) for i in range(c)]
    return hp.Packed(cts, np.arange(c), np.broadcast_to(np.arange(h * w).reshape(h, w), (c, h, w)).copy())


@settings(max_examples=20, deadline=None)
@given(st.integers(-40, 40), st.integers(0, 1000))
def test_rotation_is_cyclic_and_its_inverse_restores(k, seed):
    sim = hp.SlotSimulator(16)
    v = np.random.default_rng(seed).normal(size=16)
    ct = sim.encrypt(v)
    assert np.array_equal(ct.rot(k).values[0], np.roll(v, -k))  # slot i receives slot i + k
    assert np.array_equal(ct.rot(k).rot(-k).values[0], v)
    assert np.array_equal(ct.rot(k + 16).values[0], ct.rot(k).values[0])
    assert sim.total().rotations == (0 if k % 16 == 0 else 5)  # 5 non-trivial rot calls above


def test_counters_and_cost_model_by_hand():
    sim = hp.SlotSimulator(8)
    a = sim.encrypt(np.arange(8.0))
    b = a.mul_plain(2.0).add(a).mul_ct(a).rot(3).add_plain(np.ones(8))
    assert np.allclose(b.values[0], np.roll(3 * np.arange(8.0) ** 2, -3) + 1)
    counts = sim.total()
    assert counts.as_dict() == {"rotations": 1, "mul_plain": 1, "mul_ct": 1, "adds": 2}
    assert b.depth == 2
    assert hp.CostModel().latency(counts) == pytest.approx(10 + 1 + 2 + 0.2)
    assert a.rot(0) is a and sim.total().rotations == 1  # rot(0) is free


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 3), st.integers(1, 5), st.sampled_from([(3, 1), (1, 0)]))
def test_densepack_equals_conv2d(seed, c_in, c_out, kernel_pad):
    kernel, pad = kernel_pad
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, 4, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    sim = hp.SlotSimulator(256)
    packed, n = hp.client_dense_input(sim, x.numpy())
    out, _ = hp.dense_pack_linear(packed, hp.conv_matrix(weight, 4, 4, pad), n,
                                  np.repeat(bias.numpy(), 16), (c_out, 4, 4))
    assert np.allclose(out.decrypt(), F.conv2d(x, weight, bias, padding=pad).numpy(), atol=1e-12)
    compact = hp.compact_dense_output(out, n, _)
    assert np.array_equal(compact.slot.reshape(-1), np.arange(c_out * 16))
    assert np.allclose(compact.decrypt(), out.decrypt(), atol=1e-12)


def test_densepack_counts_match_closed_form_on_a_hand_sized_layer():
    # conv 3x3, 1 -> 2 channels on 4x4, S = 64: n = 16, k = 4, m = 32, G = 8
    sim = hp.SlotSimulator(64)
    x = np.random.default_rng(0).normal(size=(1, 1, 4, 4))
    packed, n = hp.client_dense_input(sim, x)
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    out, groups = hp.dense_pack_linear(packed, hp.conv_matrix(weight, 4, 4, 1), n, np.ones(32), (2, 4, 4))
    assert (n, groups) == (16, 8)
    assert sim.total().as_dict() == {"rotations": 8 * 4 + 7, "mul_plain": 2 * 8, "mul_ct": 0,
                                     "adds": 8 * 4 + 7 + 1}
    assert out.slot[1, 3, 3] == (31 // 8) * 16 + 31 % 8  # output o = g + G*j sits in slot j*n + g


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 3), st.integers(1, 4))
def test_convpack_equals_conv2d_client_and_server_copies(seed, c_in, c_out):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, 4, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    want = F.conv2d(x, weight, bias, padding=1).numpy()
    sim = hp.SlotSimulator(64)
    copies, ref = hp.client_conv_copies(sim, x.numpy(), 3, 1)
    assert np.allclose(hp.conv_pack_conv(copies, ref, weight, bias, 1).decrypt(), want, atol=1e-12)
    assert sim.total().rotations == 0 and sim.encrypted == 9 * c_in
    server = hp.SlotSimulator(64)
    packed = raster_channels(server, x.numpy())
    out = hp.conv_pack_conv(hp.shifted_copies(packed, 3, 1), packed.slot[0], weight, bias, 1)
    assert np.allclose(out.decrypt(), want, atol=1e-12)
    assert server.total().rotations == 8 * c_in  # every non-centre tap of every channel


def test_convpack_1x1_counts_match_closed_form():
    # r = 3 channels of 2x2 in one ciphertext at offsets c*4 -> C_out = 5: r-1 rotations, r*C_out HMA
    sim = hp.SlotSimulator(16)
    x = np.random.default_rng(1).normal(size=(1, 3, 2, 2))
    packed = hp.Packed([sim.encrypt(x.reshape(1, -1))], np.zeros(3, dtype=int), np.arange(12).reshape(3, 2, 2))
    weight = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    out = hp.conv_pack_conv(hp.shifted_copies(packed, 1, 0), packed.slot[0], weight, bias, 0)
    assert np.allclose(out.decrypt(), F.conv2d(torch.tensor(x), weight, bias).numpy(), atol=1e-12)
    assert sim.total().as_dict() == {"rotations": 2, "mul_plain": 15, "mul_ct": 0, "adds": 2 * 5 + 5}
    assert len(out.cts) == 5


def test_convpack_term_by_term_path_equals_the_simulators_shortcut():
    # real ciphertexts take _conv_pack_terms; the simulator's einsum shortcut must give the same values,
    # counts and depth
    x = np.random.default_rng(3).normal(size=(1, 2, 4, 4))
    weight, bias = torch.randn(3, 2, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    outs, counts = [], []
    for path in (hp._conv_pack_lockstep, hp._conv_pack_terms):
        sim = hp.SlotSimulator(32)
        copies, ref = hp.client_conv_copies(sim, x, 3, 1)
        masks = {(a, b): np.isin(np.arange(32), ref[hp.tap_mask(4, 4, a, b, 1)]).astype(float)
                 for a in range(3) for b in range(3)}
        bias_plain = np.zeros((3, 32))
        bias_plain[:, :16] = bias.numpy()[:, None]
        outs.append(path(copies, masks, weight.numpy(), bias_plain))
        counts.append(sim.total().as_dict())
    assert counts[0] == counts[1]
    for fast, slow in zip(*outs):
        assert np.allclose(fast.values, slow.values, atol=1e-12) and fast.depth == slow.depth == 1


def test_square_pool_and_merge_in_the_slots():
    sim = hp.SlotSimulator(128)
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 4))
    packed = raster_channels(sim, x)
    sq = hp.square(packed)
    assert np.allclose(sq.decrypt(), x ** 2) and sim.total().mul_ct == 3
    pooled = hp.avgpool2(sq)
    assert np.allclose(pooled.decrypt(), F.avg_pool2d(torch.tensor(x ** 2), 2).numpy(), atol=1e-12)
    merged = hp.merge_into_one(pooled)
    assert len(merged.cts) == 1 and np.allclose(merged.decrypt(), pooled.decrypt(), atol=1e-12)
    assert len(np.unique(merged.slot)) == merged.slot.size  # no two values share a slot


@pytest.mark.parametrize("plan", ["dense", "conv", "ffconv"])
def test_whole_network_plans_equal_torch(plan):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Square(), nn.AvgPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                        Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 3)).double()
    if plan == "ffconv":
        net = convert_to_ffconv(net, {"0": 2, "3": 2})
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    logits, sim, info = encrypted_forward(net, x, plan, slots=1024)
    assert np.abs(logits - net(x).detach().numpy()).max() < 1e-9
    assert sim.total("conv:").rotations > 0 or plan == "conv"
    assert info["client_ciphertexts"] == (9 if plan == "conv" else 1)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(InputError, match="power of two"):
        hp.SlotSimulator(100)
    sim = hp.SlotSimulator(8)
    with pytest.raises(InputError, match="plaintext"):
        sim.encrypt(np.ones(8)).mul_plain(np.ones(4))
    with pytest.raises(InputError, match="finite"):
        sim.encrypt(np.full(8, np.nan))
    with pytest.raises(InputError, match="plan"):
        encrypted_forward(nn.Sequential(nn.Flatten()), torch.zeros(1, 1, 2, 2), "bogus")
