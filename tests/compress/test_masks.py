"""Masks and magnitude / random pruning: exact sparsity, hand-computed oracles, ignored layers,
pruned weights staying zero, clear errors naming the layer."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.compress.cost import cost_columns
from honed.compress.masks import (MaskCallback, apply_mask, count_kept, is_nested, magnitude_prune,
                                  mask_gradients, masked_weights, ones_mask, prunable_weights, random_prune,
                                  shuffle_mask, sparsity)
from honed.core.errors import InputError
from honed.core.loop import train


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))


def test_prunable_weights_are_linear_and_conv_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    assert list(prunable_weights(model)) == ["0.weight", "3.weight"]
    assert list(prunable_weights(model, ignore=["3.weight"])) == ["0.weight"]


def test_global_magnitude_prune_oracle():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -4.0], [2.0, -0.3]]))
        model[1].weight.copy_(torch.tensor([[-0.2, 3.0]]))
    mask = magnitude_prune(model, 0.5)  # 6 weights -> prune the 3 smallest |w|: 0.1, 0.2, 0.3
    assert mask["0.weight"].tolist() == [[False, True], [True, False]]
    assert mask["1.weight"].tolist() == [[False, True]]
    layerwise = magnitude_prune(model, 0.5, scope="layerwise")  # 2 of 4 in layer 0, 1 of 2 in layer 1
    assert layerwise["0.weight"].tolist() == [[False, True], [True, False]]
    assert layerwise["1.weight"].tolist() == [[False, True]]


def test_layerwise_differs_from_global_when_layers_differ_in_scale():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[10.0, 20.0]]))
    glob = magnitude_prune(model, 0.5)
    assert glob["0.weight"].sum() == 1 and glob["1.weight"].sum() == 2
    lw = magnitude_prune(model, 0.5, scope="layerwise")
    assert lw["0.weight"].tolist() == [[False, False], [True, True]] and lw["1.weight"].tolist() == [[False, True]]


@settings(max_examples=30, deadline=None)
@given(target=st.floats(0.0, 0.99), scope=st.sampled_from(["global", "layerwise"]), seed=st.integers(0, 99))
def test_sparsity_equals_target_up_to_rounding(target, scope, seed):
    model = tiny_mlp(seed)
    mask = magnitude_prune(model, target, scope=scope)
    total = sum(v.numel() for v in mask.values())
    per_layer = len(mask) if scope == "layerwise" else 1
    assert abs(sparsity(mask) * total - target * total) <= 0.5 * per_layer + 1e-9
    rnd = random_prune(model, target, scope=scope, generator=torch.Generator().manual_seed(seed))
    assert count_kept(rnd) == count_kept(mask)


def test_ties_still_give_the_exact_count():
    model = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    mask = magnitude_prune(model, 0.37)
    assert count_kept(mask) == 63


def test_current_mask_is_respected_and_masks_nest():
    model = tiny_mlp()
    first = magnitude_prune(model, 0.3)
    with torch.no_grad():  # revive a pruned weight with a huge value: it must stay pruned
        name, keep = next(iter(first.items()))
        dict(model.named_parameters())[name][~keep] = 100.0
    second = magnitude_prune(model, 0.6, current=first)
    assert is_nested(second, first) and not is_nested(first, second)
    assert round(sparsity(second), 6) == round(round(0.6 * 35) / 35, 6)
    with pytest.raises(InputError, match="already sparser"):
        magnitude_prune(model, 0.1, current=second)


def test_ignored_layers_stay_dense():
    model = tiny_mlp()
    mask = magnitude_prune(model, 0.8, ignore=["3.weight"])
    assert "3.weight" not in mask
    before = model[3].weight.detach().clone()
    apply_mask(model, mask)
    assert torch.equal(model[3].weight, before)
    assert (model[0].weight == 0).sum() == 16  # round(0.8 * 20)


def test_apply_mask_zeroes_exactly_the_pruned_entries():
    model = tiny_mlp()
    mask = magnitude_prune(model, 0.5)
    kept_values = model[0].weight.detach()[mask["0.weight"]].clone()
    apply_mask(model, mask)
    assert torch.all(model[0].weight[~mask["0.weight"]] == 0)
    assert torch.equal(model[0].weight.detach()[mask["0.weight"]], kept_values)


def test_pruned_weights_stay_zero_through_training_with_the_callback():
    model = tiny_mlp()
    mask = magnitude_prune(model, 0.7)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    before = model[0].weight.detach().clone()
    train(model, [(x, y)] * 5, opt, epochs=2, callbacks=[MaskCallback(mask)], progress=False)
    for name, keep in mask.items():
        assert torch.all(dict(model.named_parameters())[name][~keep] == 0), name
    assert not torch.equal(model[0].weight.detach()[mask["0.weight"]], before[mask["0.weight"]])


def test_plain_function_path_for_a_users_own_loop():
    model = tiny_mlp()
    mask = magnitude_prune(model, 0.6)
    apply_mask(model, mask)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
        mask_gradients(model, mask)
        assert torch.all(model[0].weight.grad[~mask["0.weight"]] == 0)
        opt.step()
        apply_mask(model, mask)
    assert torch.all(model[3].weight[~mask["3.weight"]] == 0)


def test_masked_weights_trains_a_plain_loop_exactly_like_the_callback():
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    mask = magnitude_prune(tiny_mlp(), 0.7)
    with_callback = tiny_mlp()
    opt = torch.optim.SGD(with_callback.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    train(with_callback, [(x, y)] * 5, opt, epochs=1, callbacks=[MaskCallback(mask)], progress=False)
    plain = tiny_mlp()
    names, params = list(dict(plain.named_parameters())), list(plain.parameters())
    opt = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)  # built before the block
    with masked_weights(plain, mask):
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(plain(x), y).backward()
            opt.step()
    for (name, a), b in zip(with_callback.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert list(dict(plain.named_parameters())) == names and all(p is q for p, q in zip(plain.parameters(), params))
    opt.zero_grad()
    nn.functional.cross_entropy(plain(x), y).backward()
    opt.step()  # outside the block nothing masks any more
    assert torch.any(plain[0].weight[~mask["0.weight"]] != 0)


def test_magnitude_prune_refuses_nonfinite_weights():
    model = tiny_mlp()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="'3.weight' contain NaN"):
        magnitude_prune(model, 0.5)


def test_shuffle_mask_keeps_layer_density():
    mask = magnitude_prune(tiny_mlp(), 0.5, scope="layerwise")
    shuffled = shuffle_mask(mask, torch.Generator().manual_seed(0))
    assert {k: int(v.sum()) for k, v in shuffled.items()} == {k: int(v.sum()) for k, v in mask.items()}
    glob = shuffle_mask(mask, torch.Generator().manual_seed(0), scope="global")
    assert count_kept(glob) == count_kept(mask)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_sparsity_outside_unit_interval_is_one_clear_error(bad):
    with pytest.raises(InputError, match="sparsity"):
        magnitude_prune(tiny_mlp(), bad)


def test_unknown_layer_errors_name_the_layer():
    model = tiny_mlp()
    with pytest.raises(InputError, match="'fc9.weight'"):
        magnitude_prune(model, 0.5, ignore=["fc9.weight"])
    with pytest.raises(InputError, match="'fc9.weight'"):
        apply_mask(model, {"fc9.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(InputError, match="'0.weight'.*shape"):
        apply_mask(model, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(InputError, match="'0.weight'.*bool"):
        apply_mask(model, {"0.weight": torch.ones(5, 4)})
    with pytest.raises(InputError, match="scope"):
        magnitude_prune(model, 0.5, scope="per-channel")


def test_cost_columns_count_nonzero_params_and_effective_macs():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = magnitude_prune(model, 0.5)  # 35 weights -> 18 pruned (round(17.5) = 18, banker's rounding)
    pruned = 35 - count_kept(mask)
    cols = cost_columns(model, torch.rand(1, 4), mask, repeats=3, warmup=1)
    assert cols["params_total"] == 4 * 5 + 5 + 5 * 3 + 3
    assert cols["params_nonzero"] == cols["params_total"] - pruned
    assert cols["macs_dense"] == 4 * 5 + 5 * 3
    assert cols["macs_effective"] == 35 - pruned
    assert cols["latency_b1_ms"] > 0 and cols["latency_b64_ms"] > 0
    assert torch.all(model[0].weight != 0)  # the model itself is not masked


def test_cost_columns_effective_macs_of_a_conv():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    mask = {"weight": torch.zeros(2, 1, 3, 3, dtype=torch.bool)}
    mask["weight"][0, 0, 1, 1] = True  # one weight, used at every one of 4x4 output positions
    cols = cost_columns(conv, torch.rand(1, 1, 4, 4), mask, repeats=2, warmup=1)
    assert cols["macs_dense"] == 2 * 9 * 16 and cols["macs_effective"] == 16
    assert ones_mask(conv)["weight"].all()


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_shuffle_mask_stays_on_the_mask_device_with_a_cpu_generator(scope):
    from tests.device_checks import META, assert_on, cpu_generator
    mask = {"a": torch.ones(4, 4, dtype=torch.bool, device=META), "b": torch.ones(3, dtype=torch.bool, device=META)}
    assert_on(META, shuffle_mask(mask, cpu_generator(), scope))


def test_random_prune_on_the_test_device_keeps_the_cpu_mask(device):
    """Issue 18: random scores are drawn on the generator's device, so one seed prunes the same weights
    on every device; the mask lives on the weights' device."""
    from tests.device_checks import assert_on, cpu_generator
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    on_cpu = random_prune(model, 0.5, generator=cpu_generator(2))
    moved = random_prune(model.to(device), 0.5, generator=cpu_generator(2))
    assert_on(device, moved)
    assert all(torch.equal(moved[k].cpu(), on_cpu[k]) for k in on_cpu)
