"""TernGrad tensor ops (arXiv:1705.07878): the card's honest unit tests, hand oracles and hypothesis."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.distributed.terngrad import (aggregate_ternary, layer_scaler, message_bytes, pack_2bit,
                                        shared_scalers, ternarize, ternary_levels, unpack_2bit)


def test_every_output_element_is_minus_s_zero_or_s():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    s = layer_scaler(g)
    out = ternarize(g, s, torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= {-float(s), 0.0, float(s)}
    assert out.shape == g.shape and out.dtype == g.dtype
    assert (out.unique().numel()) == 3  # all three levels occur on 1000 normal elements


def test_unbiased_without_clipping_within_four_standard_errors():
    g = torch.tensor([0.3, -0.05, 0.0, 0.9, -0.7, 0.01])
    s = float(g.abs().max())  # no clipping: |g| <= s everywhere
    gen = torch.Generator().manual_seed(2)
    draws = ternarize(g.expand(20_000, -1).contiguous(), s, gen)  # 20k independent ternarisations
    mean = draws.mean(0)
    # Var of s*sign*Bernoulli(|g|/s) is s|g| - g^2 per element.
    se = torch.sqrt((s * g.abs() - g ** 2) / 20_000)
    assert torch.all((mean - g).abs() <= 4 * se + 1e-6), (mean, g, se)
    assert mean[2] == 0 and torch.isclose(mean[3], torch.tensor(0.9))  # exact at 0 and at |g| = s


def test_clipped_values_are_bounded_by_c_sigma_and_saturate():
    g = torch.cat([torch.randn(500, generator=torch.Generator().manual_seed(3)), torch.tensor([50.0, -50.0])])
    sigma = g.std(unbiased=False)
    s = layer_scaler(g, clip_factor=2.5)
    assert torch.isclose(s, 2.5 * sigma)
    out = ternarize(g, s, torch.Generator().manual_seed(4))
    assert out.abs().max() <= 2.5 * sigma + 1e-6
    assert out[-2] == s and out[-1] == -s  # |g| >= s always maps to +-s (the clipping)


def test_layer_scaler_oracles_and_max_mode():
    g = torch.tensor([1.0, -3.0, 2.0, 0.0])  # mean 0, population var (1+9+4+0)/4 = 3.5
    assert torch.isclose(layer_scaler(g, 2.0), torch.tensor(2 * math.sqrt(3.5)))
    assert layer_scaler(g, 0.0) == 3.0
    assert layer_scaler(torch.full((5,), -0.4), 2.5) == pytest.approx(0.4)  # constant: falls back to max|g|


def test_deterministic_for_one_worker_with_all_equal_magnitudes():
    g = torch.tensor([0.25, -0.25, 0.25, -0.25, 0.25])
    s = layer_scaler(g, clip_factor=0.0)
    outs = [aggregate_ternary([g.unsqueeze(0)], clip_factor=0.0, generators=[torch.Generator().manual_seed(k)])[0]
            for k in range(5)]
    for out in outs:
        assert torch.equal(out, g)  # |g| = s: Bernoulli(1), no randomness left
    assert torch.equal(ternarize(g, s), g)


def test_shared_scaler_is_the_max_over_workers():
    gen = torch.Generator().manual_seed(5)
    stacked = [torch.randn(3, 4, 5, generator=gen) * torch.tensor([1.0, 4.0, 0.5]).view(3, 1, 1),
               torch.randn(3, 7, generator=gen)]
    for c in (2.5, 0.0):
        shared = shared_scalers(stacked, c)
        for layer, g in enumerate(stacked):
            assert shared[layer] == max(layer_scaler(g[i], c) for i in range(3))
    whole = torch.cat([g.reshape(3, -1) for g in stacked], 1)
    glob = shared_scalers(stacked, 2.5, scope="global")
    assert torch.equal(glob, torch.full((2,), float(max(layer_scaler(w, 2.5) for w in whole))))


def test_aggregate_levels_are_multiples_of_s_over_n_and_small_tensors_stay_float():
    gen = torch.Generator().manual_seed(6)
    stacked = [torch.randn(4, 50, generator=gen), torch.randn(4, 3, generator=gen)]
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    out = aggregate_ternary(stacked, 2.5, generators=gens, min_numel=10)
    s = shared_scalers(stacked[:1], 2.5)[0]
    k = out[0] / (s / 4)
    assert torch.allclose(k, k.round(), atol=1e-5) and k.abs().max() <= 4
    assert torch.equal(out[1], stacked[1].mean(0))
    flagged = aggregate_ternary(stacked, 2.5, generators=gens, full_precision=[True, False])
    assert torch.equal(flagged[0], stacked[0].mean(0))


def test_workers_draw_independent_noise():
    g = torch.full((2, 4000), 0.5)  # identical gradients, s = 1 with clip 0 -> Bernoulli(0.5) each
    g[:, 0] = 1.0
    gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    levels = [ternary_levels(g[i], 1.0, gens[i]) for i in range(2)]
    agree = (levels[0] == levels[1]).float().mean()
    assert 0.45 < float(agree) < 0.55  # independent Bernoulli(0.5) streams agree half the time


def test_simulated_replicas_identical_after_k_steps():
    torch.manual_seed(0)
    n = 3
    base = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    replicas = [copy.deepcopy(base) for _ in range(n)]
    opts = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9) for r in replicas]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
    data = torch.Generator().manual_seed(7)
    for _ in range(5):
        grads = []
        for i, r in enumerate(replicas):  # each worker: its own shard, its own gradient
            r.zero_grad()
            x, y = torch.randn(4, 6, generator=data), torch.randint(0, 3, (4,), generator=data)
            torch.nn.functional.cross_entropy(r(x), y).backward()
            grads.append([p.grad.clone() for p in r.parameters()])
        stacked = [torch.stack(layer) for layer in zip(*grads)]
        avg = aggregate_ternary(stacked, 2.5, generators=gens)
        for r, opt in zip(replicas, opts):
            for p, g in zip(r.parameters(), avg):
                p.grad = g.clone()
            opt.step()
    for r in replicas[1:]:
        for p, q in zip(replicas[0].parameters(), r.parameters()):
            assert torch.equal(p, q)
    assert not torch.equal(replicas[0][0].weight, base[0].weight)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=0, max_size=67))
def test_pack_unpack_round_trips_any_length(values):
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_2bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(values) / 4)
    assert torch.equal(unpack_2bit(packed, len(values)), codes)


def test_pack_bit_layout_oracle_and_batched_unpack():
    packed = pack_2bit(torch.tensor([2, 0, 1, 2, 1], dtype=torch.int64))
    assert packed.tolist() == [2 + 0 * 4 + 1 * 16 + 2 * 64, 1 + 1 * 4 + 1 * 16 + 1 * 64]  # padding = code 1
    rows = torch.stack([packed, pack_2bit(torch.tensor([0, 0, 0, 0, 2]))])
    assert unpack_2bit(rows, 5).tolist() == [[2, 0, 1, 2, 1], [0, 0, 0, 0, 2]]


def test_message_bytes_formula():
    assert message_bytes(ternary_numel=9, num_scalers=2, float_numel=3) == 3 + 8 + 12
    assert message_bytes(0, 0, 5) == 20


@pytest.mark.parametrize("call", [
    lambda: layer_scaler(torch.tensor([1.0, float("nan")])),
    lambda: layer_scaler(torch.ones(3), clip_factor=-1.0),
    lambda: layer_scaler(torch.ones(3, dtype=torch.int64)),
    lambda: ternarize(torch.ones(3), 0.0),
    lambda: ternarize(torch.ones(3), -1.0),
    lambda: ternarize(torch.tensor([float("inf")]), 1.0),
    lambda: pack_2bit(torch.tensor([0, 3])),
    lambda: pack_2bit(torch.tensor([0.0, 1.0])),
    lambda: unpack_2bit(torch.zeros(2, dtype=torch.uint8), 9),
    lambda: unpack_2bit(torch.zeros(2, dtype=torch.int32), 8),
    lambda: aggregate_ternary([torch.ones(2, 3), torch.ones(3, 3)]),
    lambda: aggregate_ternary([torch.ones(2, 3)], generators=[torch.Generator()]),
    lambda: shared_scalers([torch.ones(2, 3)], scope="model"),
])
def test_bad_inputs_raise_input_error(call):
    with pytest.raises(InputError):
        call()


@pytest.mark.parametrize("clip_factor", [2.5, 0.0])
def test_bucket_scalers_equal_the_per_tensor_scalers(clip_factor):
    """The hook's whole-bucket scaler pass gives bit for bit :func:`layer_scaler` of each tensor,
    including the fallbacks (a constant tensor, a one-element tensor, an all-zero tensor)."""
    from honed.distributed.terngrad import _scalers_of

    pieces = [torch.randn(50, generator=torch.Generator().manual_seed(8)), torch.full((7,), -0.3),
              torch.tensor([0.7]), torch.zeros(5), torch.randn(3, generator=torch.Generator().manual_seed(9))]
    flat = torch.cat(pieces)
    bounds = torch.tensor([0] + [p.numel() for p in pieces]).cumsum(0).tolist()
    spans = list(zip(bounds[:-1], bounds[1:]))
    expected = [layer_scaler(p, clip_factor) if p.abs().max() > 0 else torch.tensor(0.0) for p in pieces]
    assert torch.equal(_scalers_of(flat, spans, clip_factor), torch.stack(expected))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 41), world=st.sampled_from([1, 2, 3, 127, 128]), seed=st.integers(0, 2 ** 16))
def test_summed_levels_of_packed_rows_equal_the_unpacked_sum(n, world, seed):
    """The lane-wise sum of packed rows (W <= 127) and its unpacking fallback (W > 127) both give the
    per-element sum of the W workers' levels, padding dropped."""
    from honed.distributed.terngrad import _sum_levels

    codes = torch.randint(0, 3, (world, n), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = torch.stack([pack_2bit(row) for row in codes])
    expected = (codes.to(torch.int32) - 1).sum(0)
    assert torch.equal(_sum_levels(packed, n), expected)


@settings(max_examples=25, deadline=None)
@given(quads=st.integers(1, 12), seed=st.integers(0, 2 ** 16), offset=st.sampled_from([0, 1]))
def test_word_wise_pack_of_two_masks_equals_pack_2bit_of_the_codes(quads, seed, offset):
    """code = 1 + kept_positive - kept_negative, packed four bools at a time (offset 1: a mask that does not
    start on a 4-byte boundary takes the byte-wise path)."""
    from honed.distributed.terngrad import _pack_signed_pair

    levels = torch.randint(-1, 2, (offset + 4 * quads,), generator=torch.Generator().manual_seed(seed))[offset:]
    packed = _pack_signed_pair(levels > 0, levels < 0)
    assert torch.equal(packed, pack_2bit(levels + 1))
