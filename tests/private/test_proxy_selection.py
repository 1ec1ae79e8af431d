"""SelectFormer (arXiv:2310.02373) components: entropy, phase sizes, top-k stand-in, emulators, sieve."""
import math
from dataclasses import replace

import pytest
import torch

from honed.core.errors import ConfigError, InputError
from honed.private.proxy_selection import (TinyTransformer, check_pool, entropy_from_logits, exact_chain,
                                           fit_emulators, image_tokens, make_proxy, multiphase_select,
                                           phase_sizes, secure_topk_standin, selection_cost)


def test_entropy_zero_for_one_hot_and_log_c_for_uniform():
    one_hot = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    assert float(entropy_from_logits(one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy_from_logits(torch.zeros(1, 10))) == pytest.approx(math.log(10), abs=1e-6)


def test_phase_sizes_end_at_budget_and_follow_selectivity():
    assert phase_sizes(1000, 150, [0.4]) == [400, 150]
    assert phase_sizes(1000, 150, [0.5, 0.5]) == [500, 250, 150]
    assert phase_sizes(200, 150, [0.1]) == [150, 150]  # never below B
    with pytest.raises(InputError):
        phase_sizes(10, 0, [0.5])
    with pytest.raises(ConfigError):
        phase_sizes(10, 5, [1.5])


def test_topk_standin_exact_with_deterministic_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])
    assert secure_topk_standin(scores, 2).tolist() == [1, 3]
    assert secure_topk_standin(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]


def test_image_tokens_are_2x2_patches():
    x = torch.arange(64.0).view(1, 64)
    tok = image_tokens(x)
    assert tok.shape == (1, 16, 4)
    assert tok[0, 0].tolist() == [0.0, 1.0, 8.0, 9.0]
    assert tok[0, 1].tolist() == [2.0, 3.0, 10.0, 11.0]
    with pytest.raises(InputError):
        image_tokens(torch.zeros(2, 63))


def test_softmax_emulator_fits_gaussian_inputs():
    torch.manual_seed(0)
    target = TinyTransformer(n_blocks=2)
    proxy = make_proxy(target, 1, 8)
    mses = fit_emulators(proxy, target, torch.rand(60, 64), steps=600, seed=0)
    assert mses["b0_softmax"] < 2e-3
    u = torch.randn(200, 16) * 0.5
    from honed.private.proxy_selection import _mlp
    out = _mlp(dict(proxy.params), "b0_softmax_", u)
    assert float((out - exact_chain(target, "b0_softmax", u)).pow(2).mean()) < 5e-3
    assert float((out.sum(-1) - 1).abs().mean()) < 0.1


def _scorer(model):
    return lambda x: entropy_from_logits(model(x))


def test_selection_deterministic_under_seed_and_sizes():
    def run(seed):
        torch.manual_seed(seed)
        target = TinyTransformer()
        proxy = make_proxy(target, 1, 2)
        fit_emulators(proxy, target, torch.rand(20, 64), steps=20, seed=seed)
        pool = torch.rand(50, 64, generator=torch.Generator().manual_seed(seed))
        return multiphase_select(pool, [_scorer(proxy), _scorer(target)], phase_sizes(50, 10, [0.4]))
    (a, hist_a), (b, _) = run(3), run(3)
    assert torch.equal(a, b)
    assert [len(h) for h in hist_a] == [20, 10]
    assert set(a.tolist()) <= set(hist_a[0].tolist())


def test_proxy_is_smaller_and_grows_with_width():
    target = TinyTransformer(n_blocks=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(make_proxy(target, 1, 2)) < count(make_proxy(target, 1, 8)) < count(make_proxy(target, 2, 8))


def test_selection_cost_sums_phases():
    assert selection_cost(100, [40, 10], [1.0, 2.0]) == 100 * 1.0 + 40 * 2.0
    with pytest.raises(InputError):
        selection_cost(100, [10], [1.0, 2.0])


def test_empty_and_single_class_pools_error():
    with pytest.raises(InputError, match="empty"):
        check_pool(torch.zeros(0, 64))
    with pytest.raises(InputError, match="single class"):
        check_pool(torch.rand(5, 64), torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match="empty"):
        multiphase_select(torch.zeros(0, 64), [lambda x: x.sum(1)], [1])


def test_bad_proxy_config_errors():
    with pytest.raises(ConfigError):
        make_proxy(TinyTransformer(n_blocks=2), 3, 2)
    with pytest.raises(ConfigError, match="strictly fewer"):  # card step 3: L_i < L
        make_proxy(TinyTransformer(n_blocks=2), 2, 2)
    with pytest.raises(ConfigError):
        TinyTransformer(emulator_width=0)


def test_experiment_config_rejects_proxies_as_deep_as_target():
    from honed.experiments.e01_mpc_data_selection import MPCSelectionConfig
    MPCSelectionConfig().validate()
    with pytest.raises(ConfigError, match="target_blocks"):
        MPCSelectionConfig(target_blocks=2).validate()  # P2 has 2 blocks: not strictly fewer
    with pytest.raises(ConfigError, match="phase_labels"):
        MPCSelectionConfig(phase_labels=10_000).validate()


def test_phase_labels_refit_p2_only_and_select_inside_s1():
    from honed.experiments.e01_mpc_data_selection import MPCDataSelectionExperiment, MPCSelectionConfig
    torch.manual_seed(0)
    target = TinyTransformer(n_blocks=3).eval()
    proxies = [make_proxy(target, 1, 2).eval(), make_proxy(target, 2, 4).eval()]
    gen = torch.Generator().manual_seed(1)
    boot = (torch.rand(20, 64, generator=gen), torch.arange(20) % 10)
    pool = (torch.rand(60, 64, generator=gen), torch.arange(60) % 10)
    exp = MPCDataSelectionExperiment()
    base = MPCSelectionConfig(pool_size=60, budget=10, selectivity=0.5, proxy_epochs=2)
    picks, sizes, p2 = exp._select(base, 0, target, proxies, boot, pool)
    scorers = [_scorer(proxies[0]), _scorer(proxies[1])]
    assert p2 is proxies[1] and sizes == [30, 10]
    assert torch.equal(picks["selectformer"], multiphase_select(pool[0], scorers, sizes)[0])
    before = {k: v.clone() for k, v in proxies[1].params.items()}
    picks, _, p2 = exp._select(replace(base, phase_labels=15), 0, target, proxies, boot, pool)
    assert p2 is not proxies[1] and any(not torch.equal(p2.params[k], v) for k, v in before.items())
    assert all(torch.equal(proxies[1].params[k], v) for k, v in before.items())
    s1 = multiphase_select(pool[0], scorers[:1], sizes[:1])[0]
    assert len(picks["selectformer"]) == 10 and set(picks["selectformer"].tolist()) <= set(s1.tolist())


def test_proxy_and_emulator_fit_follow_the_target_device():
    """Issue 18: make_proxy builds on the target's device (a 'meta' target gives a 'meta' proxy)."""
    from tests.device_checks import META, assert_on
    assert_on(META, *make_proxy(TinyTransformer(n_blocks=2).to(META), 1, 2).state_dict().values())


def test_sieve_on_the_test_device_selects_what_the_cpu_selects(device):
    """One seed, one selection: emulators fitted with a CPU generator and the sieve run on ``device``."""
    def run(dev):
        torch.manual_seed(3)
        target = TinyTransformer().to(dev)
        proxy = make_proxy(target, 1, 2)
        fit_emulators(proxy, target, torch.rand(20, 64).to(dev), steps=5, seed=3)
        pool = torch.rand(30, 64, generator=torch.Generator().manual_seed(3)).to(dev)
        return multiphase_select(pool, [_scorer(proxy), _scorer(target)], phase_sizes(30, 6, [0.4]))[0]
    chosen = run(device)
    assert chosen.device == torch.device(device) and chosen.tolist() == run("cpu").tolist()
