"""The compression components of the README table used as a new user would: on models defined here
(never honed.models), in plain PyTorch loops; bad inputs (NaN, wrong shape or dtype, empty batch) give
one clear error and leave the model's weights, requires_grad flags and train/eval modes as they were."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from honed.compress.gdp import GDP, GDPSchedule
from honed.compress.imp import iterative_magnitude_pruning
from honed.compress.masks import apply_mask, magnitude_prune, masked_weights
from honed.compress.opq import attach_quantizers, bake, export_compressed, opq_plan
from honed.compress.packed_format import load_packed, write_packed
from honed.compress.slimming import BNScaleL1, add_bn_l1_subgradient
from honed.compress.supernet import SuperNet
from honed.compress.supertickets import SuperTickets, SuperTicketsSchedule
from honed.core.errors import ConfigError, InputError


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) \
            if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.down(x))


class UserResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.layer1, self.layer2 = Block(6, 6), Block(6, 10, 2)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        h = self.layer2(self.layer1(F.relu(self.bn(self.stem(x)))))
        return self.fc(h.mean((2, 3)))


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 4)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc(torch.flatten(h, 1))


def data(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=gen)
    return x, (x[:, 0, :4].mean((1, 2)) * 4).long().clamp(0, 3)


def snapshot(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()],
            [n for n, _ in model.named_parameters()])


def assert_unchanged(model: nn.Module, before) -> None:
    state, grads, modes, names = before
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], v) for k, v in state.items())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [m.training for m in model.modules()] == modes
    assert [n for n, _ in model.named_parameters()] == names


def odd_state(model: nn.Module) -> nn.Module:
    """A frozen BN inside a training model and a frozen first layer: state a refused call must keep."""
    first_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    first_bn.eval()
    next(model.parameters()).requires_grad_(False)
    return model


def counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


# ----------------------------------------------------------------------------- GDP

def test_gdp_in_a_plain_loop_exports_the_gated_function_with_the_predicted_macs(device):
    torch.manual_seed(0)
    x, y = (t.to(device) for t in data())
    model = UserResNet().to(device)
    gdp = GDP(model, x[:1], GDPSchedule(target_macs=0.5, lambda_init=2.0), steps=20)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = F.cross_entropy(model(x), y) + gdp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        gdp.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 20-step run may need the target enforced
        gdp.enforce_target()
    model.eval()
    with torch.no_grad():
        gated = model(x)
        pruned = gdp.export().eval()
        assert torch.allclose(pruned(x), gated, atol=1e-5)
    assert counted_macs(pruned, x[:1]) == gdp.hard_macs() <= 0.5 * gdp.dense_macs


@pytest.mark.parametrize("example, match", [
    (torch.rand(0, 1, 8, 8), "batch dimension"), (torch.rand(1, 3, 8, 8), "does not run on example"),
    (torch.ones(1, 1, 8, 8, dtype=torch.long), "does not run on example"), ([[0.0]], "batch dimension")])
def test_gdp_refuses_a_bad_example_and_leaves_the_model_alone(example, match):
    model = odd_state(UserResNet())
    before = snapshot(model)
    with pytest.raises(InputError, match=match):
        GDP(model, example)
    assert_unchanged(model, before)
    assert not any(m._forward_hooks for m in model.modules())


def test_gdp_construction_and_a_nan_loss_leave_the_model_and_gates_alone():
    model = odd_state(UserCNN())
    before = snapshot(model)
    gdp = GDP(model, torch.rand(1, 1, 8, 8), steps=5)
    assert_unchanged(model, before)  # gates are hooks: weights, names, flags and modes as they were
    x, y = data(8)
    x[0, 0, 0, 0] = float("nan")
    (F.cross_entropy(model(x), y) + gdp.penalty()).backward()
    gates = [g.detach().clone() for g in gdp.gate_parameters()]
    with pytest.raises(InputError, match="NaN"):
        gdp.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(gates, gdp.gate_parameters()))
    with pytest.raises(ConfigError, match="gate_lr"):
        GDPSchedule(gate_lr=0.0)


# ----------------------------------------------------------------------------- IMP and masks

def test_imp_with_a_plain_train_function_on_a_user_cnn(device):
    torch.manual_seed(0)
    x, y = (t.to(device) for t in data())

    def train(model, steps):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    model = UserCNN().to(device)
    result = iterative_magnitude_pruning(model, train, 2, steps=6, rewind_step=2, ignore=["fc.weight"])
    assert [round(lv.sparsity, 2) for lv in result.levels] == [0.0, 0.2, 0.36]
    final = result.masks[-1]
    assert all(torch.all(p[~final[n]] == 0) for n, p in model.named_parameters() if n in final)


@pytest.mark.parametrize("kw, match", [({"rounds": -1}, "rounds"), ({"prune_fraction": 1.5}, "prune_fraction"),
                                       ({"rewind_step": 6}, "smaller than steps"),
                                       ({"ignore": ["nope.weight"]}, "'nope.weight'")])
def test_imp_refuses_bad_arguments_and_leaves_the_model_alone(kw, match):
    model = odd_state(UserCNN())
    before = snapshot(model)
    args = {"rounds": 1, "steps": 6, **kw}
    with pytest.raises(InputError, match=match):
        iterative_magnitude_pruning(model, lambda m, s: None, args.pop("rounds"), **args)
    assert_unchanged(model, before)


def test_masks_refuse_wrong_shape_dtype_nan_and_empty_models():
    model = odd_state(UserCNN())
    before = snapshot(model)
    mask = magnitude_prune(model, 0.5)
    for bad, match in [({**mask, "fc.weight": mask["fc.weight"][:, :3]}, "has shape"),
                       ({**mask, "fc.weight": mask["fc.weight"].float()}, "bool tensor"),
                       ({"fc.bogus": mask["fc.weight"]}, "not a parameter")]:
        with pytest.raises(InputError, match=match):
            apply_mask(model, bad)
        with pytest.raises(InputError, match=match):
            with masked_weights(model, bad):
                pass
        assert_unchanged(model, before)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="'fc.weight' contain NaN"):
        magnitude_prune(model, 0.5)
    with pytest.raises(InputError, match="nothing to prune"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


# ----------------------------------------------------------------------------- OPQ

def test_opq_in_a_plain_loop_then_export_write_and_reload(tmp_path, device):
    torch.manual_seed(0)
    x, y = (t.to(device) for t in data())
    model = UserCNN().to(device)
    plans = opq_plan(model, sparsity=0.7, avg_bits=4.0)
    attach_quantizers(model, plans)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        compressed = model(x)
    layers, dense = export_compressed(model)
    size = write_packed(tmp_path / "m.hpq", layers, dense)
    restored = load_packed(UserCNN(), tmp_path / "m.hpq").eval()  # the file is device-free: load on the CPU
    with torch.no_grad():
        assert torch.allclose(restored(x.cpu()), compressed.cpu(), atol=1e-5)
        assert torch.allclose(bake(model)(x), compressed, atol=1e-6)
    assert size == (tmp_path / "m.hpq").stat().st_size


def test_opq_refuses_nan_weights_bad_settings_and_a_second_attach():
    model = odd_state(UserCNN())
    before = snapshot(model)
    for kw, match in [({"sparsity": 1.2, "avg_bits": 3.0}, "sparsity"), ({"sparsity": 0.5}, "exactly one"),
                      ({"sparsity": 0.5, "avg_bits": float("nan")}, "avg_bits")]:
        with pytest.raises(InputError, match=match):
            opq_plan(model, **kw)
        assert_unchanged(model, before)
    plans = opq_plan(model, sparsity=0.5, avg_bits=3.0)
    attach_quantizers(model, plans)
    attached = snapshot(model)
    with pytest.raises(InputError, match="already carries an OPQ quantiser"):
        attach_quantizers(model, plans)
    assert_unchanged(model, attached)
    broken = UserCNN()
    with torch.no_grad():
        broken.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="conv2.weight contains NaN"):
        opq_plan(broken, sparsity=0.5, avg_bits=3.0)


# ----------------------------------------------------------------------------- Network Slimming

def test_bn_l1_subgradient_in_a_plain_loop_shrinks_gammas_and_refuses_bad_lambdas(device):
    x, y = (t.to(device) for t in data())

    def run(lam: float) -> float:
        torch.manual_seed(0)
        model = UserCNN().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            add_bn_l1_subgradient(model, lam)
            opt.step()
        return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d)))

    assert run(0.1) < run(0.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="lam"):
            BNScaleL1(bad)
        with pytest.raises(InputError, match="lam"):
            add_bn_l1_subgradient(UserCNN(), bad)


# ----------------------------------------------------------------------------- SuperTickets

def test_supertickets_in_a_plain_loop_searches_and_prunes(device):
    torch.manual_seed(0)
    x, y = (t.to(device) for t in data(32))
    net = SuperNet(in_channels=1, num_classes=4, image_size=8, stem_channels=4, block_channels=(6,), strides=(1,),
                   hidden=4, kernels=(3,), device=device)
    schedule = SuperTicketsSchedule(epochs=2, rho=1e-2, epoch_warmup=1.0, nas_interval=1, prune_interval=1,
                                    prune_step=0.3, target_sparsity=0.6)
    tickets = SuperTickets(net, schedule, steps_per_epoch=2, example=x[:1])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):
        for xb, yb in zip(x.split(16), y.split(16)):
            loss = F.cross_entropy(net(xb), yb) + tickets.penalty()
            opt.zero_grad()
            loss.backward()
            tickets.before_step()
            opt.step()
        tickets.end_epoch(epoch, opt)
    tickets.on_train_end()
    assert tickets.current_rho == schedule.rho  # the ramp advances without honed's loop
    assert [e["target"] for e in tickets.trace.events if e["kind"] == "prune"] == [0.3, 0.6]
    with pytest.raises(InputError, match=r"expects input \(N, 1, H, W\)"):
        net(torch.rand(2, 3, 8, 8, device=device))
