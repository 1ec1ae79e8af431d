"""GDP: smoothed L0 by hand, schedules, exact export (fold + removal), bilinear MACs vs the real count,
the plain-loop API (penalty + step), checkpoints of the un-gated and of the old gated layout."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.compress.gdp import GDP, ChannelGate, GDPSchedule, smoothed_l0
from honed.compress.gdp_gates import attached_gates
from honed.core.errors import ConfigError, InputError
from honed.core.measure import count_macs
from honed.models import create_model


def test_smoothed_l0_matches_hand_computation():
    g = torch.tensor([0.0, 0.5, -1.0, 2.0])
    # 0 + 0.25/0.5 + 1/1.25 + 4/4.25
    assert smoothed_l0(g, 0.25).item() == pytest.approx(0.5 + 0.8 + 4 / 4.25, abs=1e-6)
    g.requires_grad_(True)
    smoothed_l0(g, 0.25).backward()
    hand = 2 * 0.25 * g.detach() / (g.detach() ** 2 + 0.25) ** 2  # 2 eps g / (g^2 + eps)^2
    assert torch.allclose(g.grad, hand, atol=1e-6)


def test_smoothed_l0_tends_to_the_nonzero_count():
    g = torch.tensor([0.0, 1e-3, 0.5, -2.0, 0.0])
    assert smoothed_l0(g, 1e-12).item() == pytest.approx(3.0, abs=1e-5)
    assert smoothed_l0(g, 1e-1).item() < smoothed_l0(g, 1e-4).item() < 3.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=12), st.floats(1e-8, 10.0))
def test_smoothed_l0_lies_in_zero_to_c(values, eps):
    value = smoothed_l0(torch.tensor(values, dtype=torch.float64), eps).item()
    assert 0.0 <= value < len(values) or math.isclose(value, len(values))  # float64 may round to C
    assert value <= sum(v != 0 for v in values) + 1e-12


def test_smoothed_l0_and_schedule_refuse_bad_input():
    with pytest.raises(InputError, match="eps"):
        smoothed_l0(torch.ones(3), 0.0)
    with pytest.raises(InputError, match="NaN"):
        smoothed_l0(torch.tensor([1.0, float("nan")]), 0.1)
    with pytest.raises(ConfigError, match="target_macs"):
        GDPSchedule(target_macs=0.0)
    with pytest.raises(ConfigError, match="eps_end"):
        GDPSchedule(eps_start=1e-3, eps_end=1e-2)
    with pytest.raises(InputError, match=r"\(N, 4, \.\.\.\)"):
        ChannelGate(4)(torch.ones(2, 3, 5, 5))


def test_eps_anneals_geometrically_then_stays():
    s = GDPSchedule(eps_start=1e-1, eps_end=1e-5, anneal_fraction=0.5)
    assert s.eps_at(0, 100) == pytest.approx(1e-1)
    assert s.eps_at(25, 100) == pytest.approx(1e-3)  # halfway on a log scale
    assert s.eps_at(50, 100) == pytest.approx(1e-5)
    assert s.eps_at(99, 100) == pytest.approx(1e-5)


def _settled_resnet(widths=(8, 12, 20)):
    torch.manual_seed(0)
    model = create_model("resnet_s", in_channels=1, widths=widths, blocks_per_stage=2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    x = torch.rand(8, 1, 16, 16)
    with torch.no_grad():
        model.train()(x)
    return model.eval(), x


def _set_gates(gdp: GDP, zero_fraction: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gdp.gates:
            value = torch.randn(len(gate.gate), generator=gen)  # both signs
            value[torch.rand(len(value), generator=gen) < zero_fraction] = 0.0
            value[0] = 1.5  # every group keeps a channel
            gate.gate.copy_(value)


def test_gates_sit_after_every_bn_shared_along_streams_and_leave_the_model_layout_alone():
    model, x = _settled_resnet()
    keys, params = list(model.state_dict()), list(model.parameters())
    gdp = GDP(model, x[:1])
    assert len(gdp.gates) == 9  # 3 streams + 6 inner groups
    sites = {p.site: gate for g, gate in zip(gdp.groups, gdp.gates) for p in g.producers}
    assert set(attached_gates(model)) == set(sites)
    assert "stem.1" in sites and "stages.0.1.bn2" in sites and "stages.1.0.shortcut.1" in sites
    assert sites["stem.1"] is sites["stages.0.0.bn2"] is sites["stages.0.1.bn2"]
    assert sites["stages.1.0.shortcut.1"] is sites["stages.1.1.bn2"]
    assert sites["stages.1.0.bn1"] is not sites["stages.1.1.bn1"]
    assert list(model.state_dict()) == keys and list(model.parameters()) == params  # gates live in GDP
    assert {id(p) for p in gdp.gate_parameters()}.isdisjoint(id(p) for p in gdp.weight_parameters())


def test_folded_gates_leave_outputs_unchanged():
    model, x = _settled_resnet()
    gdp = GDP(model, x[:1])
    _set_gates(gdp, zero_fraction=0.0)
    with torch.no_grad():
        gated = model(x)
        exported = gdp.export().eval()
        out = exported(x)
    assert not any(isinstance(m, ChannelGate) for m in exported.modules()) and attached_gates(exported) == []
    assert attached_gates(model)  # the gated model keeps its gates
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in gdp.weight_parameters())
    assert torch.allclose(out, gated, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("resnet_s", dict(in_channels=1, widths=(8, 12, 20))),
                                     ("cnn", dict(channels=(8, 12), bn=True)), ("cnn", dict(channels=(8, 12), bn=False))])
def test_physically_pruned_model_computes_the_gated_model(name, kw):
    torch.manual_seed(0)
    model, x = create_model(name, **kw), torch.rand(8, 1, 16, 16)
    with torch.no_grad():
        model.train()(x)
    model.eval()
    gdp = GDP(model, x[:1])
    _set_gates(gdp, zero_fraction=0.5)
    with torch.no_grad():
        gated = model(x)
        pruned = gdp.export().eval()
        out = pruned(x)
    assert torch.allclose(out, gated, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in gdp.weight_parameters())


def test_bilinear_macs_with_hard_gates_equal_the_exported_count():
    model, x = _settled_resnet()
    gdp = GDP(model, x[:1])
    assert gdp.dense_macs == count_macs(create_model("resnet_s", in_channels=1, widths=(8, 12, 20)), x[:1])
    _set_gates(gdp, zero_fraction=0.6, seed=3)
    exported = gdp.export()
    assert gdp.hard_macs() == count_macs(exported, x[:1]) < gdp.dense_macs
    with torch.no_grad():  # 0/1 gates: the smoothed surrogate at tiny eps is the hard count
        for gate in gdp.gates:
            gate.gate.copy_((gate.gate != 0).float())
    gdp.eps = 1e-12
    assert float(gdp.soft_macs().detach()) == pytest.approx(gdp.hard_macs(), rel=1e-6)


def test_threshold_counts_tiny_gates_as_zero():
    model, x = _settled_resnet()
    gdp = GDP(model, x[:1], GDPSchedule(threshold=1e-4))
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([2.0, 1e-5, 3e-4, 0.0, 1.0, -2e-4, 1.0, 1.0]))
    assert gdp.alive()[0].tolist() == [True, False, True, False, True, False, True, True]
    assert gdp.keep_sets()["stem.0"].tolist() == [0, 2, 4, 6, 7]


def test_sparsity_regularizer_matches_hand_computation():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3),
                          nn.ReLU(), nn.Conv2d(3, 1, 1))
    gdp = GDP(model, torch.rand(1, 1, 7, 7), GDPSchedule(regularizer="sparsity"))
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([1.0, 0.0]))
        gdp.gates[1].gate.copy_(torch.tensor([1.0, 2.0, 0.5]))
    gdp.eps = 1.0
    hand = ((0.5 + 0.0) / 2 + (0.5 + 0.8 + 0.2) / 3) / 2
    assert gdp.regularizer().item() == pytest.approx(hand, abs=1e-6)


def test_lambda_controller_and_zero_crossing_clamp():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    gdp = GDP(model, torch.rand(1, 1, 5, 5), GDPSchedule(target_macs=0.5, lambda_init=1.0, lambda_lr=0.1))
    gdp.eps = 1e-12  # smoothed count = hard count: MACs = 9*9*1*n + 9*n*2 = 99 n of 396
    gdp.update_lambda()  # all 4 alive: 396/198 - 1 = 1 -> lambda + 0.1
    assert gdp.lam == pytest.approx(1.1)
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    gdp.update_lambda()  # 99/198 - 1 = -0.5 -> lambda - 0.05
    assert gdp.lam == pytest.approx(1.05)
    gate = gdp.gates[0].gate
    opt = torch.optim.SGD([gate], lr=0.1, momentum=0.9)
    before = [torch.tensor([0.5, -0.2, 0.3, 0.0])]
    with torch.no_grad():
        gate.copy_(torch.tensor([-0.1, -0.3, 0.4, 0.02]))  # entry 0 crossed 0; entry 3 revived from 0
    opt.state[gate]["momentum_buffer"] = torch.ones(4)
    gdp.clamp_crossings(before, opt)
    assert gate.tolist() == pytest.approx([0.0, -0.3, 0.4, 0.02])
    assert opt.state[gate]["momentum_buffer"].tolist() == [0.0, 1.0, 1.0, 1.0]
    with torch.no_grad():
        gate.copy_(torch.tensor([-0.1, 0.2, -0.4, 0.0]))  # every gate crossed: keep the largest old one
    gdp.clamp_crossings([torch.tensor([0.1, -0.3, 0.2, 0.0])], None)
    assert gate.tolist() == pytest.approx([0.0, -0.3, 0.0, 0.0])


def test_short_gdp_training_reaches_exact_zeros_and_exports_exactly():
    torch.manual_seed(0)
    model = create_model("cnn", channels=(8, 12), hidden=16)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    gdp = GDP(model, x[:1], GDPSchedule(target_macs=0.3, lambda_init=5.0, lambda_lr=1.0, lambda_every=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # gates are not model parameters
    from honed.core.loop import train

    train(model, [(x, y)] * 8, opt, 4, loss_fn=gdp.loss(F.cross_entropy), callbacks=[gdp.callback()], progress=False)
    zeros = sum(int((g.gate == 0).sum()) for g in gdp.gates)
    assert zeros > 0 and gdp.hard_macs() < gdp.dense_macs
    assert len(gdp.trace["hard_macs_fraction"]) == 4 and gdp.step_count == 32 == gdp.steps
    model.eval()
    with torch.no_grad():
        assert torch.allclose(gdp.export().eval()(x), model(x), atol=1e-5)


def test_plain_loop_step_matches_the_callback_run():
    def run(plain: bool):
        torch.manual_seed(0)
        model = create_model("cnn", channels=(6, 8), hidden=12)
        x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
        gdp = GDP(model, x[:1], GDPSchedule(target_macs=0.4, lambda_init=2.0), steps=6 if plain else None)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if plain:
            for _ in range(6):
                loss = F.cross_entropy(model(x), y) + gdp.penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
                gdp.step()
        else:
            from honed.core.loop import train

            train(model, [(x, y)], opt, 6, loss_fn=gdp.loss(F.cross_entropy), callbacks=[gdp.callback()],
                  progress=False)
        return torch.cat([g.detach() for g in gdp.gate_parameters()]), gdp.lam

    (g_plain, lam_plain), (g_loop, lam_loop) = run(True), run(False)
    assert torch.allclose(g_plain, g_loop, atol=1e-6) and lam_plain == pytest.approx(lam_loop)
    assert not torch.equal(g_plain, torch.ones_like(g_plain))  # the gates did move


def test_step_refuses_unknown_steps_and_nonfinite_gradients_leaving_gates_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    gdp = GDP(model, torch.rand(1, 1, 5, 5))
    with pytest.raises(InputError, match="steps=N"):
        gdp.step()
    gdp.steps = 10
    gdp.gates[0].gate.grad = torch.tensor([0.1, float("nan"), 0.0, 0.0])
    before = gdp.gates[0].gate.detach().clone()
    with pytest.raises(InputError, match="NaN"):
        gdp.step()
    assert torch.equal(gdp.gates[0].gate.detach(), before) and gdp.step_count == 0
    with pytest.raises(InputError, match="steps"):
        GDP(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), torch.rand(1, 1, 5, 5), steps=0)


def test_unsupported_model_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 4, 3))
    with pytest.raises(InputError, match=r"'1' \(InstanceNorm2d"):
        GDP(model, torch.rand(1, 1, 8, 8))
    assert attached_gates(model) == []


def test_a_second_gdp_on_the_same_model_is_refused_until_the_first_is_removed():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    first = GDP(model, torch.rand(1, 1, 5, 5))
    with pytest.raises(InputError, match="already carries GDP gates"):
        GDP(model, torch.rand(1, 1, 5, 5))
    first.remove()
    assert attached_gates(model) == []
    GDP(model, torch.rand(1, 1, 5, 5))


def test_checkpoints_of_the_plain_model_and_of_the_old_gated_layout_load():
    model, x = _settled_resnet(widths=(4, 6, 8))
    plain = copy.deepcopy(model.state_dict())
    gdp = GDP(model, x[:1])
    model.load_state_dict(plain)  # a checkpoint of the un-gated model, strict
    old = {}  # honed's earlier layout: <site>.inner.<key> and <site>.gate.gate
    sites = {p.site: gate for g, gate in zip(gdp.groups, gdp.gates) for p in g.producers}
    for key, value in plain.items():
        site = key.rpartition(".")[0]
        old[f"{site}.inner.{key.rpartition('.')[2]}" if site in sites else key] = value.clone()
    for site, gate in sites.items():
        old[f"{site}.gate.gate"] = torch.full_like(gate.gate, 0.5)
    old["stem.1.inner.weight"] = torch.full_like(plain["stem.1.weight"], 2.0)
    model.load_state_dict(old)
    assert torch.equal(model.stem[1].weight, torch.full_like(plain["stem.1.weight"], 2.0))
    assert all(torch.equal(g.detach(), torch.full_like(g, 0.5)) for g in gdp.gate_parameters())


def test_gdp_state_round_trips_and_refuses_a_foreign_state():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    gdp = GDP(model, torch.rand(1, 1, 5, 5), steps=3)
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([1.0, 0.0, 0.3, 2.0]))
    gdp.lam = 0.7
    state = gdp.state_dict()
    other = GDP(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)),
                torch.rand(1, 1, 5, 5))
    other.load_state_dict(state)
    assert torch.equal(other.gates[0].gate.detach(), gdp.gates[0].gate.detach()) and other.lam == 0.7
    with pytest.raises(InputError, match="shapes"):
        other.load_state_dict({"gates": [torch.ones(3)]})


def test_enforce_target_zeroes_the_weakest_gates_until_the_macs_fit_and_warns():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    gdp = GDP(model, torch.rand(1, 1, 5, 5), GDPSchedule(target_macs=0.5))  # MACs = 99 n of 396
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([1.0, 0.1, -0.05, 2.0]))
    with pytest.warns(UserWarning, match="zeroed 2 of 4 channel gates"):
        assert gdp.enforce_target() == 2  # 4 -> 2 channels: the two of smallest |g|
    assert gdp.gates[0].gate.tolist() == pytest.approx([1.0, 0.0, 0.0, 2.0])
    assert gdp.hard_macs() == 198 and gdp.enforce_target() == 0
    off = GDP(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)),
              torch.rand(1, 1, 5, 5), GDPSchedule(target_macs=0.1, enforce_target=False))
    assert off.enforce_target() == 0 and off.hard_macs() == 396
    gdp.schedule = GDPSchedule(target_macs=0.01)  # unreachable: every group keeps one channel
    with pytest.warns(UserWarning, match="zeroed 1 of 4"):
        assert gdp.enforce_target() == 1 and gdp.hard_counts() == [1]


def test_gates_in_the_users_optimizer_are_flagged_and_an_untrained_enforce_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x, y = torch.rand(8, 1, 5, 5), torch.randn(8, 2, 3, 3)
    gdp = GDP(model, x[:1], GDPSchedule(target_macs=0.5), steps=3)
    opt = torch.optim.SGD([*model.parameters(), *gdp.gate_parameters()], lr=0.1)  # the old, wrong way
    with pytest.warns(UserWarning, match="gates changed between two gdp.step"):
        for _ in range(2):
            loss = F.mse_loss(model(x), y) + gdp.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            gdp.step()
    untrained = GDP(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)),
                    x[:1], GDPSchedule(target_macs=0.5))
    with pytest.warns(UserWarning, match="never called"):
        untrained.enforce_target()
