"""Card 26 invariants: DMD recovers a known linear map's eigenvalues, spectral distances are metrics-like
(0 on identical spectra, symmetric), quantile summaries ignore hidden-unit permutations."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.compress.masks import magnitude_prune
from honed.compress.universality import (exact_dmd, flow_spectrum, flow_states, full_state, quantile_state,
                                         spectral_distance, spearman)
from honed.core.errors import InputError


EIGENVALUE = st.complex_numbers(max_magnitude=3, allow_nan=False, allow_infinity=False)


def linear_flow(eigs: list[complex] | list[float], steps: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """States s_{k+1} = M s_k (rows) for a real M with the given spectrum (complex ones in conjugate pairs)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for lam in eigs:
        lam = complex(lam)
        if lam.imag > 0:
            blocks.append(np.array([[lam.real, -lam.imag], [lam.imag, lam.real]]))
        elif lam.imag == 0:
            blocks.append(np.array([[lam.real]]))
    d = sum(len(b) for b in blocks)
    block = np.zeros((d, d))
    i = 0
    for b in blocks:
        block[i:i + len(b), i:i + len(b)] = b
        i += len(b)
    basis = rng.normal(size=(d, d))
    m = basis @ block @ np.linalg.inv(basis)
    states = [rng.normal(size=d)]
    for _ in range(steps):
        states.append(m @ states[-1])
    return m, torch.tensor(np.stack(states))


def test_dmd_recovers_the_eigenvalues_of_a_known_linear_map():
    m, states = linear_flow([0.9, 0.5, complex(0.7, 0.3), complex(0.7, -0.3), -0.4], steps=9)
    out = exact_dmd(states[:-1].T, states[1:].T, energy=1.0)
    assert out.rank == 5
    got = np.sort_complex(out.eigenvalues.numpy())
    want = np.sort_complex(np.linalg.eigvals(m))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # modes are eigenvectors of M: M phi = lambda phi
    for lam, phi in zip(out.eigenvalues.numpy(), out.modes.numpy().T):
        np.testing.assert_allclose(m @ phi, lam * phi, atol=1e-6 * np.abs(phi).max())


def test_flow_spectrum_with_centring_sees_the_affine_map_around_its_fixed_point():
    # s_{k+1} - s* = M (s_k - s*) with s* = s_K approximately (a fast-converging flow)
    m, deviations = linear_flow([0.5, 0.3, 0.2], steps=40, seed=1)
    fixed = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    out = flow_spectrum(deviations + fixed, centre="last", energy=1.0)
    want = np.sort(np.linalg.eigvals(m).real)
    np.testing.assert_allclose(np.sort(out.eigenvalues.real.numpy()), want, atol=1e-6)
    assert out.rank <= len(deviations) - 2  # rank cap K-1


def test_energy_truncation_and_rank_cap():
    _, states = linear_flow([0.9, 0.5, 0.1, 0.05], steps=3)  # K = 3 snapshot pairs
    capped = flow_spectrum(states, centre="none", energy=1.0)
    assert capped.rank <= 2
    assert flow_spectrum(states, centre="none", energy=1.0, max_rank=None).rank == 3
    assert exact_dmd(states[:-1].T, states[1:].T, energy=1e-9).rank == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(EIGENVALUE, min_size=0, max_size=6), st.lists(EIGENVALUE, min_size=0, max_size=6),
       st.sampled_from(["sorted-modulus", "wasserstein"]))
def test_spectral_distance_is_zero_on_identical_spectra_and_symmetric(a, b, method):
    ta, tb = torch.tensor(a, dtype=torch.complex128), torch.tensor(b, dtype=torch.complex128)
    assert spectral_distance(ta, ta, method) == pytest.approx(0.0, abs=1e-12)
    assert spectral_distance(ta, tb, method) == pytest.approx(spectral_distance(tb, ta, method), abs=1e-12)
    assert spectral_distance(ta, tb, method) >= 0
    perm = torch.tensor(a[::-1], dtype=torch.complex128)
    assert spectral_distance(ta, perm, method) == pytest.approx(0.0, abs=1e-12)  # order does not matter


def test_spectral_distance_oracle():
    a = torch.tensor([1.0, 0.5], dtype=torch.complex128)
    b = torch.tensor([0.2, 0.9], dtype=torch.complex128)
    assert spectral_distance(a, b) == pytest.approx((0.1 + 0.3) / 2)  # sorted: (1, .5) vs (.9, .2)
    assert spectral_distance(a, b, "wasserstein") == pytest.approx(0.2)
    c = torch.tensor([1.0], dtype=torch.complex128)  # padded with a zero
    assert spectral_distance(a, c) == pytest.approx(0.25)


def permuted_hidden(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    out = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        out[0].weight.copy_(model[0].weight[perm])
        out[0].bias.copy_(model[0].bias[perm])
        out[2].weight.copy_(model[2].weight[:, perm])
        out[2].bias.copy_(model[2].bias)
    return out


def test_quantile_summary_is_invariant_to_permuting_hidden_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    perm = torch.randperm(6)
    other = permuted_hidden(model, perm)
    x = torch.randn(5, 4)
    assert torch.allclose(model(x), other(x), atol=1e-6)  # the same function
    mask = magnitude_prune(model, 0.5)
    other_mask = {"0.weight": mask["0.weight"][perm], "2.weight": mask["2.weight"][:, perm]}
    weights = {n: p.detach() for n, p in model.named_parameters()}
    other_weights = {n: p.detach() for n, p in other.named_parameters()}
    q = quantile_state(weights, mask, 8)
    assert q.shape == (2 * 9,)
    assert torch.equal(q, quantile_state(other_weights, other_mask, 8))
    assert not torch.equal(full_state(weights, mask), full_state(other_weights, other_mask))
    assert q[8] == pytest.approx(float(mask["0.weight"].float().mean()))  # the density entry


def test_full_state_has_zeros_at_pruned_positions():
    w = {"a": torch.tensor([[1.0, -2.0], [3.0, 4.0]])}
    m = {"a": torch.tensor([[True, False], [False, True]])}
    assert full_state(w, m).tolist() == [1.0, 0.0, 0.0, 4.0]
    states = flow_states([w, w], [m, m], "quantiles", num_quantiles=2)
    assert states.shape == (2, 3) and states[0].tolist() == [1.0, 4.0, 0.5]


def test_spearman_and_errors():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(InputError, match="distance"):
        spectral_distance(torch.ones(1), torch.ones(1), "cosine")
    with pytest.raises(InputError, match="representation"):
        flow_states([{}, {}], [{}, {}], "pixels")
    with pytest.raises(InputError, match="NaN"):
        exact_dmd(torch.full((3, 2), float("nan")), torch.ones(3, 2))
    with pytest.raises(InputError, match="'b'"):
        full_state({"a": torch.ones(1)}, {"b": torch.ones(1, dtype=torch.bool)})


def test_experiment_tasks_are_valid_and_distinct():
    from honed.data import create_dataset
    from honed.experiments.e26_ticket_universality import LABEL_DERANGEMENT, TASKS, make_task

    base = create_dataset("digits", flat=True)
    assert all(i != j for i, j in enumerate(LABEL_DERANGEMENT)) and sorted(LABEL_DERANGEMENT) == list(range(10))
    for name in TASKS:
        task = make_task(name, base)
        assert task.train.x.shape == base.train.x.shape and len(task.test) == len(base.test)
        assert 0 <= float(task.train.x.min()) and float(task.train.x.max()) <= 1
        changed_x = not torch.equal(task.train.x, base.train.x)
        changed_y = not torch.equal(task.train.y, base.train.y)
        assert (changed_x or changed_y) == (name != "digits"), name
    assert set(make_task("low-vs-high", base).train.y.tolist()) == {0, 1}
    assert torch.equal(make_task("rotated", base).test.x, make_task("rotated", base).test.x)  # fixed task


def test_unrelated_margin_oracle():
    from honed.experiments.e26_ticket_universality import _unrelated_margin

    pairs = [("a", "b"), ("b", "a"), ("a", "gaussian"), ("gaussian", "a"), ("b", "gaussian"), ("gaussian", "b")]
    values = [1.0, 3.0, 5.0, 5.0, 7.0, 7.0]  # unrelated mean 6; a: mean(1, 3) = 2, b: 2 -> margin 4
    assert _unrelated_margin(pairs, values) == pytest.approx(4.0)
    assert _unrelated_margin(pairs[:2], values[:2]) is None
