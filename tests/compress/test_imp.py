"""IMP with rewinding: nested masks, density schedule, exact rewinding, controls, errors."""
import pytest
import torch
from torch import nn

from honed.compress.imp import (PlainTrainer, RewindCapture, StepTrainer, iterative_magnitude_pruning,
                                random_reinit, reinitialize, rewind, train_ticket)
from honed.compress.masks import count_kept, count_total, is_nested, shuffle_mask
from honed.core.errors import InputError
from honed.core.loop import evaluate_classifier, train
from honed.data import Batches, Split


def toy_task(n: int = 128, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=gen)
    return Split(x, (x[:, 0] + x[:, 1] > x[:, 2] + x[:, 3]).long())


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def run_imp(rounds=4, rewind_step=3, **kw):
    data = toy_task()
    trainer = StepTrainer(Batches(data, 32, seed=0), total_steps=12,
                          make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    model = small_net()
    result = iterative_magnitude_pruning(
        model, trainer, rounds, prune_fraction=0.2, rewind_step=rewind_step, keep_trained=True,
        evaluate=lambda m: evaluate_classifier(m, data.x, data.y), **kw)
    return model, trainer, result


def test_masks_are_nested_and_follow_the_density_schedule():
    _, _, result = run_imp(rounds=5)
    masks = result.masks
    assert len(masks) == 6
    total = count_total(masks[0])
    for level, (outer, inner) in enumerate(zip(masks, masks[1:]), start=1):
        assert is_nested(inner, outer)
        assert abs(count_kept(inner) - total * 0.8 ** level) <= 1  # (1 - q)^k within one element
        assert result.levels[level].sparsity == pytest.approx(1 - count_kept(inner) / total)
    assert count_kept(masks[0]) == total  # level 0 is dense


def test_trained_levels_respect_their_masks():
    model, _, result = run_imp(rounds=3)
    for level in result.levels:
        for name, keep in level.mask.items():
            assert torch.all(level.trained[name][~keep] == 0)
    final = result.levels[-1].mask
    assert all(torch.all(p[~final[n]] == 0) for n, p in model.named_parameters() if n in final)
    assert "accuracy" in result.levels[-1].metrics


def test_rewind_state_is_the_state_after_rewind_step_steps():
    data = toy_task()
    trainer = StepTrainer(Batches(data, 32, seed=0), total_steps=12,
                          make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    reference = small_net()
    capture = RewindCapture(5)
    train(reference, Batches(data, 32, seed=0), torch.optim.SGD(reference.parameters(), lr=0.1), epochs=2,
          callbacks=[capture], progress=False)
    result = iterative_magnitude_pruning(small_net(), trainer, 1, rewind_step=5)
    for key, value in capture.state.items():
        assert torch.equal(result.rewind_state[key], value), key
    assert not torch.equal(result.rewind_state["0.weight"], result.init_state["0.weight"])


def test_rewind_zero_is_the_initialisation():
    _, _, result = run_imp(rounds=1, rewind_step=0)
    for key, value in result.init_state.items():
        assert torch.equal(result.rewind_state[key], value)


def test_rewinding_restores_exact_saved_weights_on_surviving_entries():
    model, _, result = run_imp(rounds=2)
    mask = result.masks[-1]
    rewind(model, result.rewind_state, mask)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(params[name][keep], result.rewind_state[name][keep])
        assert torch.all(params[name][~keep] == 0)
    assert torch.equal(params["0.bias"], result.rewind_state["0.bias"])  # dense tensors fully rewound


def test_controls_keep_the_mask_and_differ_from_the_ticket():
    model, trainer, result = run_imp(rounds=2)
    mask = result.masks[-1]
    reinit = random_reinit(small_net(), mask, trainer, result.rewind_step, seed=123)
    params = dict(reinit.named_parameters())
    assert all(torch.all(params[n][~k] == 0) for n, k in mask.items())
    fresh = reinitialize(small_net(), seed=123)
    assert not torch.equal(fresh[0].weight, small_net()[0].weight)
    assert torch.equal(fresh[0].weight, reinitialize(small_net(5), seed=123)[0].weight)  # seeded
    shuffled = shuffle_mask(mask, torch.Generator().manual_seed(0))
    assert count_kept(shuffled) == count_kept(mask)
    ticket = train_ticket(small_net(), result.rewind_state, shuffled, trainer, result.rewind_step)
    assert all(torch.all(p[~shuffled[n]] == 0) for n, p in ticket.named_parameters() if n in shuffled)


def test_ignored_layers_stay_dense_through_imp():
    model, _, result = run_imp(rounds=3, ignore=["2.weight"])
    assert all("2.weight" not in m for m in result.masks)
    assert (model[2].weight == 0).sum() == 0


@pytest.mark.parametrize("kw, match", [
    ({"rounds": -1}, "rounds"), ({"prune_fraction": 1.0}, "prune_fraction"),
    ({"rewind_step": -2}, "rewind_step"), ({"ignore": ["fc.weight"]}, "'fc.weight'")])
def test_bad_imp_arguments_are_clear_errors(kw, match):
    args = {"rounds": 1, **kw}
    rounds = args.pop("rounds")
    trainer = StepTrainer(Batches(toy_task(), 32), total_steps=2)
    with pytest.raises(InputError, match=match):
        iterative_magnitude_pruning(small_net(), trainer, rounds, **args)


def test_rewind_step_beyond_training_is_a_clear_error():
    trainer = StepTrainer(Batches(toy_task(), 32), total_steps=4)
    with pytest.raises(InputError, match="optimizer step 10"):
        iterative_magnitude_pruning(small_net(), trainer, 1, rewind_step=10)


def test_a_level_is_exactly_train_ticket_from_the_rewind_point():
    model, trainer, result = run_imp(rounds=2)
    again = train_ticket(small_net(7), result.rewind_state, result.masks[-1], trainer, result.rewind_step)
    for key, value in result.levels[-1].trained.items():
        assert torch.equal(again.state_dict()[key], value), key


def plain_train(data: Split, log: list | None = None):
    """A user's own loop: ``train(model, steps)``, its optimizer built inside (with weight decay and
    momentum, which would revive pruned weights without a mask in the forward pass)."""
    def train(model: nn.Module, steps: int) -> None:
        gen = torch.Generator().manual_seed(len(log) if log is not None else 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(data.x), (32,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if log is not None:
            log.append(steps)

    return train


def test_imp_drives_a_plain_train_function():
    data, log = toy_task(), []
    model = small_net()
    result = iterative_magnitude_pruning(model, plain_train(data, log), 2, steps=12, rewind_step=3,
                                         keep_trained=True)
    assert log == [3, 9, 9, 9]  # dense run split at the rewind point, then each level from there
    for level in result.levels:
        assert all(torch.all(level.trained[n][~keep] == 0) for n, keep in level.mask.items())
    assert all(torch.all(p[~result.masks[-1][n]] == 0) for n, p in model.named_parameters() if n in result.masks[-1])
    assert is_nested(result.masks[2], result.masks[1])
    again = small_net()  # the rewind point is the user's loop after 3 steps from theta_init
    plain_train(data, [])(again, 3)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in result.rewind_state.items())


def test_plain_trainer_serves_train_ticket_and_keeps_parameter_objects():
    data = toy_task()
    model = small_net()
    params = list(model.parameters())
    mask = {"0.weight": torch.rand(16, 6) > 0.5}
    train_ticket(model, small_net().state_dict(), mask, PlainTrainer(plain_train(data), 5), 0)
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert list(dict(model.named_parameters())) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert torch.all(model[0].weight[~mask["0.weight"]] == 0) and torch.any(model[0].weight != 0)


def test_a_plain_function_without_steps_and_a_train_fn_ignoring_callbacks_are_clear_errors():
    data = toy_task()
    with pytest.raises(InputError, match="pass steps="):
        iterative_magnitude_pruning(small_net(), plain_train(data), 1)
    with pytest.raises(InputError, match="smaller than steps"):
        iterative_magnitude_pruning(small_net(), plain_train(data), 1, steps=4, rewind_step=4)

    def ignores_callbacks(model, start_step, callbacks):
        plain_train(data)(model, 4)

    with pytest.raises(InputError, match="rewind point .optimizer step 2. was never captured"):
        iterative_magnitude_pruning(small_net(), ignores_callbacks, 1, rewind_step=2)
    with pytest.raises(InputError, match="pruned weights become non-zero"):  # rewind_step=0 no longer misleads
        iterative_magnitude_pruning(small_net(), ignores_callbacks, 1, rewind_step=0)


def test_reinitialize_leaves_the_global_generators_where_they_were(device):
    """Issue 18: re-drawing under a seed forks the CPU generator and every initialised GPU's."""
    net = small_net().to(device)
    torch.manual_seed(7)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(7)
    expected = (torch.rand(3), torch.rand(3, device=device))
    torch.manual_seed(7)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(7)
    reinitialize(net, seed=123)
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(3, device=device), expected[1])
