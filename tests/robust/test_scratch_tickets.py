"""Robust Scratch Tickets + R2S (arXiv:2110.14068): the card's invariants and small oracles."""
import math

import pytest
import torch
import torch.nn.functional as F

from honed.core.errors import InputError
from honed.robust.attacks import PGD
from honed.robust.scratch_tickets import (EOTPGD, RandomTicketSwitch, SubnetConv2d, SubnetLinear, apply_ticket,
                                          extract_ticket, frozen_weights, scratch_mlp, search_ticket,
                                          set_keep_ratio, subnet_layers, top_k_mask)


def toy_data(n=64, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen)
    y = (x[:, 0] > x[:, 1]).long() + 2 * (x[:, 2] > 0.5).long()
    return x, y


def test_top_k_mask_oracle_keeps_largest_magnitudes():
    scores = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2])
    # k = 0.4: int(0.6 * 5) = 3 smallest |s| pruned -> keep -3.0 and 2.0
    assert top_k_mask(scores, 0.4).tolist() == [False, True, False, True, False]


@pytest.mark.parametrize("shape,k", [((7, 13), 0.05), ((10, 64), 0.1), ((4, 3, 3, 3), 0.3), ((5,), 1.0)])
def test_mask_has_target_sparsity(shape, k):
    mask = top_k_mask(torch.randn(shape), k)
    n = math.prod(shape)
    assert int(mask.sum()) == n - int((1 - k) * n)


def test_every_layer_of_network_has_target_sparsity():
    net = scratch_mlp(16, (32, 32), 4, keep_ratio=0.3, seed=1)
    for layer in subnet_layers(net).values():
        n = layer.weight.numel()
        assert int(layer.current_mask().sum()) == n - int(0.7 * n)


def test_signed_constant_weights_have_two_magnitudes_and_are_not_parameters():
    layer = SubnetLinear(50, 20, keep_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(layer.weight.abs(), torch.full_like(layer.weight, math.sqrt(2 / 50)))
    assert [n for n, _ in layer.named_parameters()] == ["scores"]


def test_straight_through_gives_gradient_to_masked_out_scores():
    layer = SubnetLinear(8, 4, keep_ratio=0.25, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 8)
    layer(x).sum().backward()
    pruned = ~top_k_mask(layer.scores, 0.25)
    assert pruned.any() and (layer.scores.grad[pruned] != 0).all()
    # oracle: d(sum W*m x)/d|S| = W * sum_n x (STE), times sign(S) through |S|
    expected = layer.weight * x.sum(0) * layer.scores.sign()
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)


def test_frozen_weights_never_change_and_mask_changes_during_adversarial_search():
    x, y = toy_data()
    net = scratch_mlp(16, (32,), 4, keep_ratio=0.3, seed=0)
    before, mask_before = frozen_weights(net), extract_ticket(net).masks
    search_ticket(net, [(x[:32], y[:32]), (x[32:], y[32:])], 3, lr=1.0,
                  attack=lambda m: PGD(m, eps=0.1, alpha=0.03, steps=2))
    after = frozen_weights(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    ticket = extract_ticket(net)
    assert any(not torch.equal(mask_before[k], ticket.masks[k]) for k in ticket.masks)
    assert abs(ticket.density() - 0.3) < 0.01


def make_switch(m=3, switch="per_batch", seed=0):
    x, y = toy_data()
    net, tickets = scratch_mlp(16, (32,), 4, seed=0), []
    for i, k in enumerate([0.1, 0.3, 0.5][:m]):
        set_keep_ratio(net, k)
        net.train()
        net(x[i * 8:(i + 1) * 8 + 8])  # give each ticket its own BN statistics
        tickets.append(extract_ticket(net))
    return RandomTicketSwitch(net.eval(), tickets, switch=switch, generator=torch.Generator().manual_seed(seed)), x, y


@pytest.mark.parametrize("switch", ["per_batch", "per_input"])
def test_r2s_switch_samples_every_ticket_and_only_candidates(switch):
    model, x, y = make_switch(3, switch)
    per_ticket = torch.stack([model.forward_ticket(x[:4], i) for i in range(3)])
    forwards = 300 if switch == "per_batch" else 100
    for _ in range(forwards):
        out = model(x[:4])
        # every row equals the output of one of the candidates
        assert all(any(torch.allclose(out[r], per_ticket[i, r], atol=1e-5) for i in range(3)) for r in range(4))
    counts = model.draw_counts
    n = sum(counts)
    assert n == (300 if switch == "per_batch" else 400)
    assert min(counts) > 0.25 * n  # uniform over 3: each ~1/3 (seeded, loose bound)


def test_tickets_share_one_weight_tensor_and_keep_distinct_masks():
    model, x, _ = make_switch(3)
    w = {k: v.clone() for k, v in frozen_weights(model.network).items()}
    for i in range(3):
        model.forward_ticket(x, i)
    assert all(torch.equal(w[k], v) for k, v in frozen_weights(model.network).items())
    densities = [t.density() for t in model.tickets]
    assert densities == sorted(densities) and densities[0] < densities[-1]


def test_eot_gradient_equals_mean_of_per_ticket_gradients():
    model, x, y = make_switch(3)
    attack = EOTPGD(model, eps=0.1, alpha=0.02, steps=1)
    attack._labels = y
    eot = attack.loss_grad(x, y)
    grads = []
    for i in range(3):
        xi = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model.forward_ticket(xi, i), y, reduction="sum")
        grads.append(torch.autograd.grad(loss, xi)[0])
    assert torch.allclose(eot, torch.stack(grads).mean(0), atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_eot_pgd_stays_in_ball_and_restores_switch():
    model, x, y = make_switch(2)
    x_adv = EOTPGD(model, eps=0.1, alpha=0.03, steps=3, generator=torch.Generator().manual_seed(0))(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model._pinned is None and all(l.fixed_mask is None for l in subnet_layers(model.network).values())


def test_conv_subnet_layer_shapes_and_sparsity():
    conv = SubnetConv2d(1, 6, 3, padding=1, keep_ratio=0.2, generator=torch.Generator().manual_seed(0))
    assert conv(torch.rand(2, 1, 8, 8)).shape == (2, 6, 8, 8)
    assert int(conv.current_mask().sum()) == 54 - int(0.8 * 54)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="keep_ratio"):
        top_k_mask(torch.randn(4), 0.0)
    with pytest.raises(InputError, match="keep_ratio"):
        SubnetLinear(4, 4, keep_ratio=1.5)
    with pytest.raises(InputError, match="NaN"):
        top_k_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(InputError, match="weight_init"):
        SubnetLinear(4, 4, weight_init="xavier")
    model, x, y = make_switch(2)
    with pytest.raises(InputError, match="ticket index"):
        with model.pinned(5):
            pass
    with pytest.raises(InputError, match="switch"):
        RandomTicketSwitch(model.network, model.tickets, switch="sometimes")
    with pytest.raises(InputError, match="RandomTicketSwitch"):
        EOTPGD(model.network, eps=0.1)
    other = scratch_mlp(16, (8,), 4)
    with pytest.raises(InputError, match="ticket mask"):
        apply_ticket(other, model.tickets[0])
    with pytest.raises(InputError):
        EOTPGD(model, eps=0.1)(x * 2, y)


@pytest.mark.parametrize("layer", [lambda **kw: SubnetLinear(3, 4, **kw), lambda **kw: SubnetConv2d(2, 3, 3, **kw)])
def test_subnet_layers_draw_with_a_cpu_generator_onto_their_device(layer):
    """Issue 18: W and S are drawn on the generator's device and moved to the layer's, so one seed
    gives the same random network on every device."""
    from tests.device_checks import META, assert_on
    on_meta = layer(generator=torch.Generator().manual_seed(0), device="meta")
    assert_on(META, *on_meta.state_dict().values())
    a, b = (layer(generator=torch.Generator().manual_seed(0)) for _ in range(2))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.scores, b.scores)


def test_search_ticket_moves_cpu_batches_to_the_network_device(device):
    torch.manual_seed(0)
    net = scratch_mlp(4, (6,), 3, keep_ratio=0.5, device=device)
    batches = [(torch.rand(8, 4), torch.randint(3, (8,)))]
    losses = search_ticket(net, batches, epochs=1)
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert {p.device for p in net.parameters()} == {torch.device(device)}
