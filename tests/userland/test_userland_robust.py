"""Issue 11: every robust component of the README (attacks, Smooth, SmoothingRegularizer, MAT, AugMax's
augmax_attack, the query prior, scratch tickets) on models defined here, trained in a plain PyTorch
loop on sklearn digits; bad inputs give one InputError and leave the model (weights, every submodule's
train/eval flag, no .grad) as it was."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.core.errors import InputError
from honed.robust.attacks import CW, DIFGSM, FGSM, IFGSM, MIFGSM, PGD, PGDL2, GuidedCW
from honed.robust.attacks.query_prior import QueryPriorAttack, wace_loss
from honed.robust.certify import ABSTAIN, Smooth, SmoothingRegularizer
from honed.robust.scratch_tickets import EOTPGD, RandomTicketSwitch, extract_ticket, search_ticket, to_subnet
from honed.robust.training import MixedMAT, ParallelMAT
from honed.robust.training.augmax import augmax_attack, sample_chains


class UserCNN(nn.Module):
    """A user's CNN: BatchNorm and Dropout make train/eval flags matter."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def digits(device):
    data = load_digits()
    x = torch.tensor(data.images[:400], dtype=torch.float32).unsqueeze(1) / 16
    return x.to(device), torch.tensor(data.target[:400]).to(device)


def plain_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3, loss_on=None) -> nn.Module:
    """The user's own loop; ``loss_on(model, xb, yb)`` replaces plain cross-entropy when given."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=order).split(50):
            xb, yb = x[batch], y[batch]
            loss = loss_on(model, xb, yb) if loss_on else F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.fixture(scope="module")
def trained(digits):
    return plain_fit(UserCNN().to(digits[0].device), *digits)


def state(model: nn.Module) -> dict:
    return {"tensors": {k: v.clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()],
            "grads": [p.grad is None for p in model.parameters()]}


def assert_as_it_was(model: nn.Module, before: dict) -> None:
    now = state(model)
    assert now["modes"] == before["modes"] and now["grads"] == before["grads"]
    assert all(torch.equal(now["tensors"][k], v) for k, v in before["tensors"].items())


def user_modes(model: nn.Module) -> None:
    """Training mode with a frozen BatchNorm, as a fine-tuning user would leave it."""
    model.train()
    model.body[1].eval()
    model.zero_grad(set_to_none=True)


ATTACKS = {
    "fgsm": lambda m: FGSM(m, 0.1),
    "ifgsm": lambda m: IFGSM(m, 0.1, 0.02, 5),
    "mifgsm": lambda m: MIFGSM(m, 0.1, 0.02, 5),
    "difgsm": lambda m: DIFGSM(m, 0.1, 0.02, 5, generator=torch.Generator().manual_seed(0)),
    "pgd": lambda m: PGD(m, 0.1, 0.02, 5),  # torchattacks' positional call
    "pgdl2": lambda m: PGDL2(m, 1.0, 0.3, 5),
    "cw": lambda m: CW(m),
    "guided_cw_a": lambda m: GuidedCW(m, steps=20),
    "guided_cw_b": lambda m: GuidedCW(m, steps=20, variant="B"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_runs_on_a_user_cnn_and_leaves_it_as_it_was(name, trained, digits):
    x, y = digits[0][:16], digits[1][:16]
    user_modes(trained)
    before = state(trained)
    attack = ATTACKS[name](trained)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    if name in ("fgsm", "ifgsm", "mifgsm", "difgsm", "pgd"):
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert attack.last_stats.success.any(), f"{name} fooled the user CNN on none of 16 digits"
    assert_as_it_was(trained, before)


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x.clone().fill_(float("nan")), y), "NaN"),
    (lambda x, y: (x, y.int()), "int64"),
    (lambda x, y: (x[:0], y[:0]), "non-empty"),
    (lambda x, y: (x * 3, y), r"\[0, 1\]"),
    (lambda x, y: (x, y[:2]), "shape"),
])
def test_attacks_refuse_bad_inputs_in_one_line_and_change_nothing(bad, match, trained, digits):
    x, y = bad(digits[0][:4], digits[1][:4])
    user_modes(trained)
    before = state(trained)
    for name in ("pgd", "cw"):
        with pytest.raises(InputError, match=match):
            ATTACKS[name](trained)(x, y)
    assert_as_it_was(trained, before)


def test_attacks_refuse_a_model_whose_output_is_not_logits(digits):
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Flatten(0)).to(digits[0].device)  # (N * 10,), not (N, 10)
    with pytest.raises(InputError, match="logits of shape"):
        PGD(flat, 0.1)(digits[0][:4], digits[1][:4])


def test_smooth_predicts_and_certifies_a_user_cnn_and_refuses_bad_inputs(trained, digits):
    user_modes(trained)
    before = state(trained)
    smooth = Smooth(trained, num_classes=10, sigma=0.25, input_shape=(1, 8, 8),
                    generator=torch.Generator().manual_seed(0))
    label, radius = smooth.certify(digits[0][0], n0=10, n=100, alpha=0.01, batch_size=50)
    assert label == ABSTAIN and radius == 0.0 or 0 <= label < 10 and radius > 0
    assert smooth.predict(digits[0][1:2], n=50, alpha=0.01) in (ABSTAIN, *range(10))
    for bad in (digits[0][:2], torch.full((1, 8, 8), float("nan")), torch.ones(1, 8, 8) * 2):
        with pytest.raises(InputError):
            smooth.certify(bad, n0=10, n=100, alpha=0.01)
    assert_as_it_was(trained, before)


def test_smoothing_regularizer_trains_a_user_cnn_in_a_plain_loop(digits):
    reg = SmoothingRegularizer(sigma=0.25, copies=2, generator=torch.Generator().manual_seed(0))
    model = plain_fit(UserCNN(1).to(digits[0].device), digits[0][:100], digits[1][:100], epochs=1, loss_on=reg.loss_on)
    assert reg.last_ce is not None and all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(InputError, match="float batch"):
        reg.loss_on(model, digits[0][:4].long(), digits[1][:4])


def test_mixed_mat_loss_and_parallel_mat_on_user_members(digits):
    x, y = digits[0][:100], digits[1][:100]
    mat = MixedMAT(strengths=(0.05, 0.1))
    member = plain_fit(UserCNN(2).to(x.device), x, y, epochs=1, loss_on=mat.loss_on)
    assert mat.counts.tolist() == [100, 100] and set(mat.last_losses) == {"clean", "eps0.05", "eps0.1"}
    ensemble = ParallelMAT([member, plain_fit(UserCNN(3).to(x.device), x, y, epochs=1)]).eval()
    assert torch.allclose(ensemble.probabilities(x[:4]).sum(1), x.new_ones(4))
    assert PGD(ensemble, 0.1, 0.02, 3)(x[:4], y[:4]).shape == (4, 1, 8, 8)
    with pytest.raises(InputError, match="NaN"):
        mat.loss_on(member, torch.full_like(x[:4], float("nan")), y[:4])


def test_augmax_attack_on_a_user_cnn(trained, digits):
    x, y = digits[0][:8], digits[1][:8]
    chains = sample_chains(x, width=2, generator=torch.Generator().manual_seed(0))
    user_modes(trained)
    before = state(trained)
    x_adv, m, w = augmax_attack(trained, x, y, chains, steps=3, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and m.shape == (8,) and torch.allclose(w.sum(1), x.new_ones(8))
    with pytest.raises(InputError, match="chains"):
        augmax_attack(trained, x, y, chains[:, 0])
    assert_as_it_was(trained, before)


def test_query_prior_attack_with_user_victim_and_surrogate(trained, digits):
    x, y = digits[0][:8], digits[1][:8]
    surrogate = plain_fit(UserCNN(4).to(x.device), *digits, epochs=1).eval()
    user_modes(trained)
    before = state(trained)
    attack = QueryPriorAttack(trained, surrogate, eps=0.1, steps=3)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    logits = surrogate(x)
    loss = wace_loss(logits, y, logits.argsort(1, descending=True)[:, 1:2], x.new_ones(8, 1))
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(InputError):
        attack(torch.full_like(x, float("nan")), y)
    assert_as_it_was(trained, before)


def test_scratch_tickets_on_a_user_mlp_searched_in_a_plain_loop(digits):
    torch.manual_seed(0)
    user_mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(digits[0].device)
    network = to_subnet(user_mlp, keep_ratio=0.5)
    batches = list(zip(digits[0][:200].split(50), digits[1][:200].split(50)))
    tickets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        search_ticket(network, batches, epochs=1, attack=lambda m: PGD(m, 0.05, 0.02, 2))
        tickets.append(extract_ticket(network))
    switch = RandomTicketSwitch(network, tickets, generator=torch.Generator().manual_seed(0)).eval()
    x, y = digits[0][:8], digits[1][:8]
    x_adv = EOTPGD(switch, eps=0.05, alpha=0.02, steps=2)(x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and sum(switch.draw_counts) >= 1
    with pytest.raises(InputError, match="RandomTicketSwitch"):
        EOTPGD(user_mlp, eps=0.05)
