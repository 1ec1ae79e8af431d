"""AugMax / AugMix / DuBIN (honed.robust.training.augmax): card invariants and hand-computed oracles."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.loop import train
from honed.models import create_model
from honed.robust.training.augmax import (OPS, AugMixLoss, DualBN2d, DuBIN, apply_op, augmax_attack,
                                          augmix_weights, convert_to_dubin, dubin_layer_names, jsd_loss, mix,
                                          norm_route, sample_chains)


def images(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def test_chains_shape_range_and_ops():
    x = images()
    chains = sample_chains(x, width=3, generator=torch.Generator().manual_seed(1))
    assert chains.shape == (6, 3, 1, 8, 8) and chains.min() >= 0 and chains.max() <= 1
    for op in OPS:
        out = apply_op(x, op, torch.full((6,), 3.0), torch.ones(6))
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_op_oracles():
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.6]]]])
    assert torch.allclose(apply_op(x, "autocontrast", torch.ones(1), torch.ones(1)),
                          torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]))
    # level 10: solarize threshold 0 -> every pixel inverted
    assert torch.allclose(apply_op(x, "solarize", torch.full((1,), 10.0), torch.ones(1)), 1 - x)


def test_mix_endpoints():
    x, chains = images(4), torch.rand(4, 3, 1, 8, 8)
    w = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    assert torch.equal(mix(x, chains, w, torch.zeros(4)), x)
    assert torch.allclose(mix(x, chains, w, torch.ones(4)), chains[torch.arange(4), torch.tensor([0, 1, 2, 1])])


def test_augmix_weights_on_simplex():
    w, m = augmix_weights(500, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(w.sum(1), torch.ones(500)) and (w >= 0).all()
    assert (m >= 0).all() and (m <= 1).all()
    assert abs(float(w.mean()) - 1 / 3) < 0.02  # Dirichlet(1,1,1) mean


def test_attack_stays_on_simplex_and_raises_loss():
    x, y = images(8), torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))
    chains = torch.rand(8, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    model = toy_model()
    m0, q0 = torch.full((8,), 0.5), torch.zeros(8, 3)
    x_adv, m, w = augmax_attack(model, x, y, chains, steps=4, tau=10_000, m=m0, q=q0)
    assert torch.allclose(w.sum(1), torch.ones(8)) and (m >= 0).all() and (m <= 1).all()
    with torch.no_grad():
        loss0 = F.cross_entropy(model(mix(x, chains, q0.softmax(1), m0)), y)
        loss1 = F.cross_entropy(model(x_adv), y)
    assert loss1 > loss0


def test_fat_budget_stops_misclassified_samples():
    model = toy_model()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # always predicts class 2
    x, y = images(4), torch.tensor([0, 1, 0, 1])
    chains, m0, q0 = torch.rand(4, 3, 1, 8, 8), torch.full((4,), 0.5), torch.zeros(4, 3)
    _, m, w = augmax_attack(model, x, y, chains, steps=5, tau=1, m=m0, q=q0)
    assert torch.equal(m, m0) and torch.allclose(w, q0.softmax(1))  # misclassified at step 1 -> frozen


def test_attack_leaves_weights_stats_and_mode_untouched():
    model = create_model("resnet_s", in_channels=1, num_classes=3, widths=(4, 8), blocks_per_stage=1)
    convert_to_dubin(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images(4), torch.tensor([0, 1, 2, 0])
    augmax_attack(model, x, y, sample_chains(x), steps=3, tau=10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(m.route == "M" for m in model.modules() if isinstance(m, DualBN2d))


def test_jsd():
    a = torch.randn(5, 4)
    assert float(jsd_loss(a, a, a)) == pytest.approx(0, abs=1e-6)
    p, q = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])
    mid = (p + q) / 2
    want = 0.5 * ((p * (p / mid).log()).sum() + (q * (q / mid).log()).sum())
    assert float(jsd_loss(p.log(), q.log())) == pytest.approx(float(want), rel=1e-5)
    assert float(jsd_loss(torch.randn(5, 4), torch.randn(5, 4))) >= 0


def test_dubin_without_instance_is_bn():
    torch.manual_seed(0)
    x, bn, du = torch.randn(4, 3, 2, 2), nn.BatchNorm2d(3), DuBIN(3, instance_ratio=0.0)
    assert torch.allclose(du(x), bn(x), atol=1e-6)
    assert torch.allclose(du.bn.main.running_mean, bn.running_mean)


def test_dubin_hand_computation():
    x = torch.arange(16, dtype=torch.float32).view(2, 2, 2, 2) ** 1.5
    out = DuBIN(2, instance_ratio=0.5, eps=1e-5)(x)
    a = x[:, :1]
    inst = (a - a.mean((2, 3), keepdim=True)) / (a.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    b = x[:, 1:]
    batch = (b - b.mean((0, 2, 3), keepdim=True)) / (b.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(out, torch.cat((inst, batch), 1), atol=1e-5)


def test_route_a_updates_only_auxiliary_stats():
    model = nn.Sequential(DuBIN(4))
    with norm_route(model, "A"):
        model(torch.randn(8, 4, 3, 3) + 2)
    bn = model[0].bn
    assert torch.equal(bn.main.running_mean, torch.zeros(2)) and not torch.equal(bn.aux.running_mean, torch.zeros(2))
    assert bn.route == "M"


def test_convert_resnet():
    model = create_model("resnet_s", in_channels=1, num_classes=10, widths=(4, 8, 16), blocks_per_stage=1).eval()
    x = images(3)
    ref = model(x)
    assert dubin_layer_names(model) == ["stages.0.0.bn1", "stages.1.0.bn1"]
    convert_to_dubin(model, dubin_layers=[])
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(p, DualBN2d)
                   for p in model.modules() for m in p.children() if isinstance(p, nn.Sequential))
    assert torch.allclose(model(x), ref, atol=1e-6)  # dual BN copies: same function in eval mode
    model2 = convert_to_dubin(create_model("resnet_s", in_channels=1, widths=(4, 8, 16), blocks_per_stage=1))
    assert sum(isinstance(m, DuBIN) and m.split > 0 for m in model2.modules()) == 2


@pytest.mark.parametrize("mode", ["augmix", "augmax"])
def test_loss_trains_one_epoch(mode):
    torch.manual_seed(0)
    model = create_model("resnet_s", in_channels=1, num_classes=3, widths=(4, 8), blocks_per_stage=1)
    convert_to_dubin(model)
    loss = AugMixLoss(mode, steps=2)
    data = [(images(8, s), torch.randint(0, 3, (8,))) for s in range(2)]
    hist = train(model, data, torch.optim.SGD(model.parameters(), 0.05), 1, loss_fn=loss, callbacks=[loss],
                 progress=False)
    assert torch.isfinite(torch.tensor(hist["train_loss"])).all()
    assert not any(bool((m.aux.running_mean == 0).all()) for m in model.modules() if isinstance(m, DualBN2d)) \
        or mode == "augmix"


def test_bad_inputs():
    x = images(2)
    with pytest.raises(InputError):
        sample_chains(x * 2)
    with pytest.raises(InputError):
        sample_chains(torch.rand(2, 8, 8))
    with pytest.raises(InputError):
        mix(x, torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2), torch.rand(2))
    with pytest.raises(InputError):
        augmax_attack(toy_model(), x, torch.tensor([0, 1]), torch.rand(2, 3, 1, 8, 8), step_size=0)
    with pytest.raises(InputError):
        DuBIN(4, instance_ratio=1.0)
    with pytest.raises(InputError):
        AugMixLoss("mixup")
    with pytest.raises(InputError):
        norm_route(nn.Sequential(DuBIN(2)), "B").__enter__()
    with pytest.raises(InputError):
        convert_to_dubin(toy_model(), dubin_layers=["nope"])


def test_mixing_weights_drawn_on_the_cpu_land_on_the_requested_device():
    """Issue 18: the draws happen on the generator's device and move to ``device`` (default: where they
    were drawn)."""
    from tests.device_checks import META, assert_on, cpu_generator
    assert_on(META, augmix_weights(3, 2, cpu_generator(), META))
    w, m = augmix_weights(3, 2, cpu_generator(1))
    again_w, again_m = augmix_weights(3, 2, cpu_generator(1), "cpu")
    assert_on("cpu", w, m) and torch.equal(w, again_w) and torch.equal(m, again_m)


def test_chains_and_attack_on_the_test_device_match_the_cpu_with_a_cpu_generator(device):
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    on_cpu = sample_chains(x, 2, generator=torch.Generator().manual_seed(2))
    moved = sample_chains(x.to(device), 2, generator=torch.Generator().manual_seed(2))
    assert moved.device == torch.device(device) and torch.allclose(moved.cpu(), on_cpu, atol=1e-5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).to(device)
    x_adv, m, w = augmax_attack(model, x.to(device), torch.tensor([0, 1, 2], device=device), moved, steps=1,
                                step_size=0.1, tau=1, generator=torch.Generator().manual_seed(3))
    assert {t.device for t in (x_adv, m, w)} == {torch.device(device)}
