"""The Attack base: input checks, eval mode restored, parameters untouched, passes counted."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.robust.attacks import CW, DIFGSM, FGSM, IFGSM, MIFGSM, PGD, PGDL2, GuidedCW

ATTACKS = {
    "fgsm": lambda m: FGSM(m, eps=0.1),
    "ifgsm": lambda m: IFGSM(m, eps=0.1, steps=3),
    "mifgsm": lambda m: MIFGSM(m, eps=0.1, steps=3),
    "difgsm": lambda m: DIFGSM(m, eps=0.1, steps=3, diversity_prob=1.0, generator=torch.Generator().manual_seed(0)),
    "pgd": lambda m: PGD(m, eps=0.1, alpha=0.05, steps=3),
    "pgdl2": lambda m: PGDL2(m, eps=0.5, alpha=0.2, steps=3),
    "cw": lambda m: CW(m, c=1.0, steps=5, binary_search_steps=2),
    "gcw_a": lambda m: GuidedCW(m, variant="A", c=1.0, steps=5, binary_search_steps=2, refresh_every=2),
    "gcw_b": lambda m: GuidedCW(m, variant="B", c=1.0, steps=5, binary_search_steps=2),
}


class ModeRecorder(nn.Module):
    """Identity that records whether it ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(ModeRecorder(), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Dropout(0.5), nn.Flatten(), nn.Linear(48, 4))


def images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    x[:, :, 0, 0] = 0.0
    x[:, :, 3, 3] = 1.0
    return x, torch.arange(n) % 4


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_runs_in_eval_mode_and_restores_every_flag(name):
    model = tiny_cnn().train()
    model[4].eval()  # a submodule with its own flag must keep it
    bn_mean = model[2].running_mean.clone()
    x, y = images()
    ATTACKS[name](model)(x, y)
    assert model.training and model[1].training and not model[4].training
    assert model[0].seen and not any(model[0].seen), "a forward ran in train mode"
    assert torch.equal(model[2].running_mean, bn_mean), "BatchNorm statistics changed: not eval mode"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_parameters_keep_requires_grad_and_receive_no_grad(name):
    model = tiny_cnn()
    model[1].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = images()
    x_adv = ATTACKS[name](model)(x, y)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", list(ATTACKS))
def test_success_is_measured_on_the_returned_images(name):
    model = tiny_cnn().eval()
    x, y = images()
    attack = ATTACKS[name](model)
    x_adv = attack(x, y)
    with torch.no_grad():
        assert torch.equal(attack.last_stats.success, model(x_adv).argmax(1) != y)


def test_mode_is_restored_when_the_attack_raises():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).train()  # logits (N, 3) but label 5
    x, _ = images(2)
    with pytest.raises(InputError, match="labels must lie in"):
        PGD(model, eps=0.1)(x, torch.tensor([0, 5]))
    assert model.training and model[1].training


def test_counts_of_passes_and_iterations():
    model = tiny_cnn()
    x, y = images()
    pgd = PGD(model, eps=0.1, alpha=0.02, steps=5)
    pgd(x, y)
    assert (pgd.last_stats.forwards, pgd.last_stats.backwards, pgd.last_stats.iterations) == (5, 5, 5)
    assert pgd.last_stats.queries == 10 and pgd.last_stats.elapsed_s > 0
    fgsm = FGSM(model, eps=0.1)
    fgsm(x, y)
    assert (fgsm.last_stats.forwards, fgsm.last_stats.backwards) == (1, 1)


def test_stats_are_fresh_per_call():
    model = tiny_cnn()
    x, y = images()
    attack = IFGSM(model, eps=0.1, steps=2)
    attack(x, y)
    attack(x, y)
    assert attack.last_stats.forwards == 2


@pytest.mark.parametrize("x_bad, message", [
    (torch.full((2, 1, 4, 4), 1.5), r"\[0, 1\]"),
    (torch.full((2, 1, 4, 4), -0.1), r"\[0, 1\]"),
    (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.long), "float"),
    (torch.zeros(16), "batch"),
])
def test_bad_images_raise_one_input_error(x_bad, message):
    with pytest.raises(InputError, match=message):
        PGD(tiny_cnn(), eps=0.1)(x_bad, torch.zeros(len(x_bad), dtype=torch.long))


@pytest.mark.parametrize("y_bad, message", [
    (torch.zeros(2), "int64"),
    (torch.zeros(2, 1, dtype=torch.long), "shape"),
    (torch.zeros(3, dtype=torch.long), "shape"),
    ([0, 1], "Tensor"),
])
def test_bad_labels_raise_one_input_error(y_bad, message):
    x, _ = images(2)
    with pytest.raises(InputError, match=message):
        CW(tiny_cnn(), steps=2)(x, y_bad)


@pytest.mark.parametrize("head", [nn.Flatten(0), nn.Unflatten(1, (4, 1))])
def test_wrong_logits_shape_raises_input_error(head):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), head)
    x, y = images(2)
    with pytest.raises(InputError, match="logits of shape"):
        FGSM(model, eps=0.1)(x, y)


@pytest.mark.parametrize("build", [
    lambda m: FGSM(m, eps=-0.1), lambda m: PGD(m, eps=-1.0), lambda m: PGDL2(m, eps=float("nan")),
    lambda m: PGD(m, steps=0), lambda m: PGD(m, alpha=0.0), lambda m: IFGSM(m, steps=1.5),
    lambda m: DIFGSM(m, diversity_prob=1.5), lambda m: CW(m, steps=0), lambda m: CW(m, c=0.0),
    lambda m: CW(m, kappa=-1.0), lambda m: CW(m, binary_search_steps=0), lambda m: CW(m, tanh_scale=1.5),
    lambda m: GuidedCW(m, variant="C"), lambda m: GuidedCW(m, eta0=-0.5), lambda m: GuidedCW(m, refresh_every=-1),
    lambda m: PGD(m, targeted="yes"), lambda m: PGD(lambda x: x),
])
def test_bad_hyper_parameters_raise_input_error(build):
    with pytest.raises(InputError):
        build(tiny_cnn())


def test_inputs_are_not_modified():
    x, y = images()
    x0, y0 = x.clone(), y.clone()
    CW(tiny_cnn(), c=1.0, steps=3, binary_search_steps=1)(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0) and not x.requires_grad


def test_verification_can_be_skipped():
    model = tiny_cnn()
    x, y = images()
    attack = PGD(model, eps=0.1, alpha=0.05, steps=2)
    attack.verify = False
    attack(x, y)
    assert attack.last_stats.success is None and attack.last_stats.forwards == 2
    assert "verify" not in repr(attack) and "eps=0.1" in repr(attack)


def test_torchattacks_positional_call_shape_is_accepted():
    model = tiny_cnn()
    pgd = PGD(model, 0.1, 0.01, 5, False)
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.random_start) == (0.1, 0.01, 5, False)
    assert PGD(model, 0.1).eps == 0.1 and FGSM(model, 0.2).eps == 0.2 and PGDL2(model, 0.5, 0.1).alpha == 0.1
    assert (IFGSM(model, 0.1, 0.02, 4).alpha, MIFGSM(model, 0.1, 0.02, 4, 0.5).decay) == (0.02, 0.5)
    di = DIFGSM(model, 0.1, 0.02, 4, 0.0, 0.8, 0.3)
    assert (di.resize_rate, di.diversity_prob) == (0.8, 0.3)
    cw = CW(model, 2.0, 0.5, 10, 0.02)
    assert (cw.c, cw.kappa, cw.steps, cw.lr) == (2.0, 0.5, 10, 0.02)
    with pytest.raises(InputError, match="eps"):
        PGD(model, "big")


def test_positional_parameters_have_torchattacks_names_in_its_order():
    import inspect

    ta = pytest.importorskip("torchattacks")
    pairs = {"PGD": PGD, "FGSM": FGSM, "BIM": IFGSM, "MIFGSM": MIFGSM, "DIFGSM": DIFGSM, "PGDL2": PGDL2, "CW": CW}
    for name, ours in pairs.items():
        theirs = list(inspect.signature(getattr(ta, name).__init__).parameters)[2:]  # after self, model
        positional = [p.name for p in inspect.signature(ours.__init__).parameters.values()
                      if p.kind is p.POSITIONAL_OR_KEYWORD][2:]
        assert positional == theirs[:len(positional)] and len(positional) >= min(len(theirs), 3), name


def test_cw_defaults_are_cheap_and_the_reference_search_is_a_named_option():
    model = tiny_cnn()
    cw = CW(model)
    assert (cw.c, cw.steps, cw.binary_search_steps) == (1.0, 50, 1)  # torchattacks' CW() cost
    ref = CW.thorough(model)
    assert (ref.c, ref.steps, ref.binary_search_steps) == (1e-3, 1000, 9)
    assert CW.thorough(model, steps=20, kappa=1.0).steps == 20
    assert isinstance(GuidedCW.thorough(model, variant="B"), GuidedCW)
