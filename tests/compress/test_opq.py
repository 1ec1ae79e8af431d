"""OPQ (arXiv:2205.11141): the card's honest unit tests - Laplace model, allocation invariants, frozen
codebooks during fine-tuning, STE gradient, packed round trip of a fine-tuned model, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.opq import (FixedCodebookWeight, LayerPlan, allocate_bits, allocate_sparsity,
                                attach_quantizers, bake, compression_rate_estimate, export_compressed,
                                grid_levels, laplace_fit, laplace_pruned_fraction, laplace_pruning_error,
                                magnitude_masks, opq_plan, quantized_layers)
from honed.compress.packed_format import CompressedLayer, load_packed, read_packed, write_packed
from honed.core.errors import InputError, StoreError
from honed.models import create_model


def laplace(n: int, b: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return -b * torch.sign(u) * torch.log1p(-2 * u.abs())


def layer_weights(seed: int = 0) -> list[torch.Tensor]:
    """Laplace weights of very different sizes and scales, like a small CNN."""
    return [laplace(n, b, seed + i).float().reshape(shape)
            for i, (n, b, shape) in enumerate([(144, 0.3, (16, 1, 3, 3)), (4608, 0.05, (32, 16, 3, 3)),
                                               (16384, 0.02, (128, 128)), (1280, 0.1, (10, 128))])]


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", in_channels=1, num_classes=10, channels=(4, 8), hidden=16, pooled=2)


# ----------------------------------------------------------------------------- Laplace model

def test_laplace_fit_recovers_the_scale_of_synthetic_weights():
    mu, b = laplace_fit(laplace(200_000, 0.07) + 0.01)
    assert abs(mu - 0.01) < 2e-3 and abs(b - 0.07) / 0.07 < 0.02


@pytest.mark.parametrize("t", [0.02, 0.05, 0.1, 0.3])
def test_pruning_error_closed_form_matches_monte_carlo(t):
    w = laplace(400_000, 0.05, seed=3)
    mc = float((w.pow(2) * (w.abs() < t)).mean())
    assert abs(laplace_pruning_error(t, 0.05) - mc) / mc < 0.02
    assert abs(laplace_pruned_fraction(t, 0.05) - float((w.abs() < t).double().mean())) < 0.005


def test_pruning_error_limits():
    assert laplace_pruning_error(0.0, 0.1) == 0.0
    assert math.isclose(laplace_pruning_error(50.0, 0.1), 2 * 0.1 ** 2, rel_tol=1e-9)


# ----------------------------------------------------------------------------- pruning allocation

@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_lagrange_ratios_meet_the_global_budget_and_stay_in_bounds(mode):
    weights = layer_weights()
    ratios = allocate_sparsity(weights, 0.9, mode)
    sizes = [w.numel() for w in weights]
    assert all(0 <= p < 1 for p in ratios)
    assert math.isclose(sum(n * p for n, p in zip(sizes, ratios)), 0.9 * sum(sizes), rel_tol=1e-9)


def test_relative_mode_prunes_bigger_layers_harder():
    weights = layer_weights()
    ratios = allocate_sparsity(weights, 0.8, "relative")
    by_size = [p for _, p in sorted(zip([w.numel() for w in weights], ratios))]
    assert by_size == sorted(by_size) and by_size[0] < 0.8 < by_size[-1]
    # stationarity: t_i = b_i sqrt(2 lam N_i)  <=>  -ln(1 - p_i) / sqrt(N_i) is the same for all layers
    consts = [-math.log(1 - p) / math.sqrt(w.numel()) for w, p in zip(weights, ratios)]
    assert max(consts) - min(consts) < 1e-9 * max(consts)


def test_absolute_mode_stationarity():
    weights = layer_weights()
    ratios = allocate_sparsity(weights, 0.7, "absolute")
    t2 = [(-laplace_fit(w)[1] * math.log(1 - p)) ** 2 / w.numel() for w, p in zip(weights, ratios)]
    assert max(t2) - min(t2) < 1e-6 * max(t2)  # t_i^2 = lam N_i


def test_total_mode_is_one_global_threshold():
    weights = layer_weights()
    masks = magnitude_masks(weights, allocate_sparsity(weights, 0.85, "total"))
    devs = [(w - laplace_fit(w)[0]).abs() for w in weights]
    kept_min = min(float(d[m].min()) for d, m in zip(devs, masks))
    pruned_max = max(float(d[~m].max()) for d, m in zip(devs, masks))
    assert pruned_max <= kept_min
    assert sum(int((~m).sum()) for m in masks) == round(0.85 * sum(w.numel() for w in weights))


def test_uniform_mode_and_zero_sparsity():
    weights = layer_weights()
    assert allocate_sparsity(weights, 0.6, "uniform") == [0.6] * 4
    assert allocate_sparsity(weights, 0.0) == [0.0] * 4


def test_empirical_masks_realise_the_target_exactly():
    weights = layer_weights(seed=5)
    ratios = allocate_sparsity(weights, 0.9)
    masks = magnitude_masks(weights, ratios)
    total = sum(w.numel() for w in weights)
    assert sum(int((~m).sum()) for m in masks) == round(0.9 * total)
    for w, m, p in zip(weights, masks, ratios):
        assert abs(int((~m).sum()) - p * w.numel()) <= 1
        dev = (w - laplace_fit(w)[0]).abs()
        assert float(dev[~m].max()) <= float(dev[m].min())  # magnitude mask within the layer


# ----------------------------------------------------------------------------- bit allocation

def test_bit_allocation_meets_the_budget_within_bounds_and_uses_it():
    ranges, kept = [1.0, 0.4, 0.2, 0.5], [120, 2000, 1600, 900]
    bits = allocate_bits(ranges, kept, avg_bits=3.0, min_bits=2, max_bits=8)
    spent = sum(n * k for n, k in zip(kept, bits))
    assert all(2 <= k <= 8 for k in bits) and spent <= 3.0 * sum(kept)
    assert all(k == 8 or n > 3.0 * sum(kept) - spent for n, k in zip(kept, bits))  # nothing left to buy
    assert bits[0] > bits[1]  # fewer kept weights and a wider range: more bits
    assert allocate_bits(ranges, kept, fixed_bits=4) == [4] * 4


def test_bit_allocation_more_weights_same_range_fewer_bits():
    bits = allocate_bits([1.0, 1.0, 1.0], [100, 10_000, 1_000_000], avg_bits=4.0)
    assert bits[0] >= bits[1] >= bits[2] and bits[0] > bits[2]


def test_plan_invariants_on_a_model():
    model = small_cnn()
    plans = opq_plan(model, 0.8, avg_bits=3.0)
    weights = dict(model.named_parameters())
    kept = {k: int(p.mask.sum()) for k, p in plans.items()}
    total = sum(p.mask.numel() for p in plans.values())
    assert total - sum(kept.values()) == round(0.8 * total)
    assert sum(kept[k] * p.bits for k, p in plans.items()) <= 3.0 * sum(kept.values())
    for name, plan in plans.items():
        assert 2 <= plan.bits <= 8 and plan.step.numel() == 1  # all channels share Delta_i and k_i
        assert plan.offset.numel() == weights[name].shape[0]  # one mean per output channel
        assert set(plans) == {k for k in weights if k.endswith("weight") and weights[k].dim() > 1}


# ----------------------------------------------------------------------------- quantiser and fine-tuning

def test_fixed_codebook_forward_oracle():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    plan = LayerPlan(mask, 3, "midtread", torch.tensor([0.1, -0.2]), torch.tensor([0.25]), 0.0)
    w = torch.tensor([[0.9, -0.2, 0.05], [-0.2, 10.0, 0.0]])
    # row 0: (0.8, -0.3)/0.25 -> 3.2, -1.2 -> 3, -1 -> 0.1+0.75, 0.1-0.25; row 1: 0, 40.8 -> clip 3, 0.8 -> 1
    expected = torch.tensor([[0.85, -0.15, 0.0], [-0.2, 0.55, 0.05]])
    assert torch.allclose(FixedCodebookWeight(plan)(w), expected, atol=1e-6)
    assert grid_levels(3, "midtread") == (-3.0, 3.0, 3.0) and grid_levels(2, "midrise") == (-1.5, 1.5, 1.5)


def test_ste_gradient_is_mask_times_upstream():
    layer = nn.Linear(5, 3, bias=False)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    attach_quantizers(layer, {"weight": LayerPlan(mask, 4, "midtread", torch.zeros(3), torch.tensor([0.1]), 0.5)})
    upstream = torch.randn(3, 5)
    (layer.weight * upstream).sum().backward()
    assert torch.equal(layer.parametrizations.weight.original.grad, upstream * mask)


def finetuned(grid: str = "midtread", quantizer: str = "unified"):
    model = small_cnn()
    plans = opq_plan(model, 0.75, avg_bits=3.0, grid=grid, quantizer=quantizer, min_bits=2)
    attach_quantizers(model, plans)
    frozen = {k: (q.mask.clone(), q.offset.clone(), q.step.clone(), q.bits)
              for k, (_, q) in quantized_layers(model).items()}
    latent = {k: m.parametrizations.weight.original.detach().clone() for k, (m, _) in quantized_layers(model).items()}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, plans, frozen, latent


@pytest.mark.parametrize("grid,quantizer", [("midtread", "unified"), ("midrise", "unified"),
                                            ("midtread", "channelwise"), ("midtread", "layerwise")])
def test_codebook_and_masks_stay_fixed_during_finetuning(grid, quantizer):
    model, plans, frozen, latent = finetuned(grid, quantizer)
    for name, (module, q) in quantized_layers(model).items():
        mask, offset, step, bits = frozen[name]
        assert torch.equal(q.mask, mask) and torch.equal(q.offset, offset) and torch.equal(q.step, step)
        assert q.bits == bits and torch.equal(q.mask, plans[name].mask)
        assert not torch.equal(module.parametrizations.weight.original, latent[name])  # it did train
        w = module.weight.detach()
        assert (w[~mask] == 0).all()  # pruned stay exactly zero
        shape = (-1,) + (1,) * (w.dim() - 1)
        level = ((w - offset.reshape(shape)) / step.reshape(shape))[mask.expand_as(w)]
        lo, hi, _ = grid_levels(bits, grid)
        frac = level - torch.floor(level) if grid == "midtread" else level - torch.floor(level) - 0.5
        assert torch.allclose(frac, torch.round(frac), atol=1e-3)  # on the codebook grid
        assert level.min() >= lo - 1e-3 and level.max() <= hi + 1e-3


def test_fine_tuned_model_round_trips_through_the_packed_file(tmp_path):
    model, _, _, _ = finetuned()
    layers, dense = export_compressed(model)
    size = write_packed(tmp_path / "m.hpq", layers, dense)
    baked = bake(model)
    fresh = small_cnn(seed=9)
    load_packed(fresh, tmp_path / "m.hpq")
    for key, value in baked.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert size < sum(v.numel() * v.element_size() for v in baked.state_dict().values())
    assert set(read_packed(tmp_path / "m.hpq").layers) == set(layers)


def test_compression_rate_estimate_oracle():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0, :10] = True
    layer = CompressedLayer((10, 10), mask, torch.zeros(10, dtype=torch.int64), 4, 8.0,
                            torch.zeros(1), torch.ones(1))
    assert compression_rate_estimate({"w": layer}, with_index=False) == 3200 / 40
    assert compression_rate_estimate({"w": layer}, with_index=True) == 3200 / (40 + 10)  # gaps 0: 10 x 1 bit


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "a"])
def test_sparsity_outside_0_1_raises(sparsity):
    with pytest.raises(InputError, match="sparsity"):
        opq_plan(small_cnn(), sparsity, avg_bits=3.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fixed_bits=0), "fixed_bits must be an integer in 1..8"),
    (dict(fixed_bits=9), "fixed_bits must be an integer in 1..8"),
    (dict(avg_bits=1.5), "avg_bits must lie in"),
    (dict(avg_bits=9.0), "avg_bits must lie in"),
    (dict(avg_bits=3.0, fixed_bits=3), "exactly one"),
    (dict(fixed_bits=1), "midtread grid needs bits >= 2"),
    (dict(avg_bits=3.0, prune_err="magic"), "prune_err must be one of"),
    (dict(avg_bits=3.0, quantizer="kmeans"), "quantizer must be one of"),
])
def test_bad_bits_and_options_raise_one_clear_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        opq_plan(small_cnn(), 0.5, **kwargs)


def test_nan_weights_and_foreign_files_raise(tmp_path):
    model = small_cnn()
    with torch.no_grad():
        model.classifier[1].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        opq_plan(model, 0.5, avg_bits=3.0)
    (tmp_path / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(StoreError):
        load_packed(small_cnn(), tmp_path / "x.safetensors")


def test_packed_file_of_another_model_raises_store_error(tmp_path):
    model, _, _, _ = finetuned()
    layers, dense = export_compressed(model)
    write_packed(tmp_path / "m.hpq", layers, dense)
    other = create_model("cnn", in_channels=1, num_classes=10, channels=(4, 8), hidden=32, pooled=2)
    with pytest.raises(StoreError, match="does not fit"):
        load_packed(other, tmp_path / "m.hpq")


def test_attaching_twice_or_a_bad_plan_is_refused_before_anything_is_attached():
    model = small_cnn()
    plans = opq_plan(model, 0.75, avg_bits=3.0)
    attach_quantizers(model, plans)
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(InputError, match="already carries an OPQ quantiser"):
        attach_quantizers(model, plans)
    assert [n for n, _ in model.named_parameters()] == names
    assert all(len(m.parametrizations.weight) == 1 for m, _ in quantized_layers(model).values())
    fresh = small_cnn()
    bad = dict(opq_plan(fresh, 0.75, avg_bits=3.0))
    last = list(bad)[-1]
    bad[last] = LayerPlan(torch.ones(2, 2, dtype=torch.bool), 3, "midtread", torch.zeros(2), torch.ones(1), 0.0)
    with pytest.raises(InputError, match=f"plan of '{last}' has shape"):
        attach_quantizers(fresh, bad)
    assert quantized_layers(fresh) == {}  # the good plans before it were not attached either
    with pytest.raises(InputError, match="not a module weight"):
        attach_quantizers(fresh, {"nope.weight": bad[last]})


def test_global_ratios_run_on_the_weights_device(device):
    """Issue 18: the 'total' allocation works on weights on any device and gives the CPU ratios."""
    torch.manual_seed(0)
    weights = [torch.randn(40), torch.randn(8, 10) * 3]
    on_cpu = allocate_sparsity(weights, 0.5, prune_err="total")
    assert allocate_sparsity([w.to(device) for w in weights], 0.5, prune_err="total") == on_cpu
