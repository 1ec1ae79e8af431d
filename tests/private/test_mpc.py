"""CrypTen harness for SelectFormer (arXiv:2310.02373): shim, fixed-point agreement, missing extra."""
import builtins
import math

import pytest
import torch

from honed.core.errors import InputError, MissingExtraError
from honed.private import mpc
from honed.private.proxy_selection import (TinyTransformer, calibrate_norm_scales, entropy_from_logits, image_tokens,
                                           layer_norm, make_proxy)


@pytest.fixture()
def crypten_single():
    crypten = mpc.import_crypten()
    crypten.init()
    yield crypten
    crypten.uninit()


def test_matmul_and_crypten_nn_match_plaintext(crypten_single):
    crypten = crypten_single
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    got = crypten.cryptensor(a).matmul(crypten.cryptensor(b)).get_plain_text()
    assert torch.allclose(got, a @ b, atol=1e-3)  # 16-bit fixed point
    layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = mpc.crypten_mlp(layers).encrypt()
    x = torch.randn(5, 4)
    assert torch.allclose(model(crypten.cryptensor(x)).get_plain_text(), layers(x), atol=1e-2)


def test_transformer_forward_matches_plaintext(crypten_single):
    crypten = crypten_single
    torch.manual_seed(0)
    x = torch.rand(3, 64)
    for model in (TinyTransformer(), make_proxy(TinyTransformer(), 1, 2)):
        params = {k: crypten.cryptensor(v) for k, v in model.mpc_parameters().items()}
        enc = model.forward_with(params, crypten.cryptensor(image_tokens(x)))
        with torch.no_grad():
            plain = model(x)
        assert torch.allclose(enc.get_plain_text(), plain, atol=0.05)
        ent = entropy_from_logits(enc).get_plain_text()
        assert torch.allclose(ent, entropy_from_logits(plain), atol=0.05)


def test_missing_extra_names_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "crypten" or name.startswith("crypten."):
            raise ImportError("No module named 'crypten'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda n, *a: fake_import(n))
    with pytest.raises(MissingExtraError, match=r"pip install 'honed\[mpc\]'") as err:
        mpc.import_crypten()
    assert "--no-deps crypten" in str(err.value) and "\n" not in str(err.value)


def test_harness_rejects_bad_input():
    with pytest.raises(InputError):
        mpc.measure_mpc_costs({"m": TinyTransformer()}, torch.zeros(0, 16, 4))
    with pytest.raises(InputError):
        mpc.measure_mpc_costs({"m": TinyTransformer()}, torch.zeros(1, 16, 4), parties=1)


@pytest.mark.slow
def test_two_party_run_matches_plaintext_and_counts_bytes():
    torch.manual_seed(0)
    target, x = TinyTransformer(), torch.rand(2, 64)
    proxy = make_proxy(target, 1, 2)
    res = mpc.measure_mpc_costs({"target": target, "proxy": proxy}, image_tokens(x))
    for name, model in (("target", target), ("proxy", proxy)):
        with torch.no_grad():
            ref = entropy_from_logits(model(x))
        assert torch.allclose(res[name]["output"], ref, atol=0.05)
        assert res[name]["bytes_per_example"] > 0 and res[name]["rounds_per_batch"] > 0
    assert res["proxy"]["bytes_per_example"] < res["target"]["bytes_per_example"]


def _low_variance_target(var: float) -> tuple[TinyTransformer, torch.Tensor]:
    """A target whose first LayerNorm sees inputs of variance ~var (embedding scaled down)."""
    torch.manual_seed(0)
    model, x = TinyTransformer(n_blocks=2), torch.rand(16, 64)
    with torch.no_grad():
        rec = {}
        model.forward_with(dict(model.params), image_tokens(x), rec)
        now = float(torch.cat(rec["b0_ln1"]).var(-1, unbiased=False).mean())
        for name in ("embed_w", "embed_b", "pos"):
            model.params[name].mul_((var / now) ** 0.5)
    return model.eval(), x


def test_calibrated_layernorm_is_accurate_under_crypten(crypten_single):
    crypten = crypten_single
    torch.manual_seed(0)
    u = torch.randn(64, 32) * 0.005 ** 0.5  # variance ~0.005: below inv_sqrt's accurate range
    g, b = torch.ones(32), torch.zeros(32)
    ref = torch.nn.functional.layer_norm(u, (32,), eps=1e-5)  # independent oracle
    enc = lambda s: layer_norm(crypten.cryptensor(u), g, b, scale=s).get_plain_text()  # noqa: E731
    assert (enc(1.0) - ref).abs().max() > 0.2  # uncalibrated: inv_sqrt is off by ~50%
    var = u.var(-1, unbiased=False) + 1e-5
    scale = math.sqrt(0.15 * 100.0 / float(var.min() * var.max()))
    assert (enc(scale) - ref).abs().max() < 0.02


def test_calibration_keeps_plaintext_and_fixes_mpc_logits(crypten_single):
    crypten = crypten_single
    model, x = _low_variance_target(0.005)
    with torch.no_grad():
        before = model(x)
    mpc_logits = lambda: model.forward_with(  # noqa: E731
        {k: crypten.cryptensor(v) for k, v in model.mpc_parameters().items()},
        crypten.cryptensor(image_tokens(x))).get_plain_text()
    err_before = float((mpc_logits() - before).abs().max())
    info = calibrate_norm_scales(model, x)
    assert info["b0_ln1"]["var_min"] < 0.005 and info["b0_ln1"]["fits"]
    lo, hi = info["b0_ln1"]["var_min"] * info["b0_ln1"]["scale"], info["b0_ln1"]["var_max"] * info["b0_ln1"]["scale"]
    assert math.isclose(lo * hi, 0.15 * 100.0, rel_tol=1e-6)  # geometric centre of [0.15, 100]
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    assert model.norm_scale("b0_ln1") > 50 and "norm_scales" in model.state_dict()
    err_after = float((mpc_logits() - before).abs().max())
    assert err_before > 0.1 and err_after < 0.05, (err_before, err_after)


def test_entropy_only_floor_reveals_entropy_of_first_values(crypten_single):
    crypten = crypten_single
    tokens = torch.randn(3, 16, 4)
    floor = mpc.EntropyOnly(10)
    enc = floor.forward_with(floor.mpc_parameters(), crypten.cryptensor(tokens))
    ref = entropy_from_logits(tokens.reshape(3, 64)[:, :10])
    assert torch.allclose(entropy_from_logits(enc).get_plain_text(), ref, atol=0.02)
    with pytest.raises(InputError):
        mpc.EntropyOnly(1)


def test_logit_margin_uncertainty_oracle_and_mpc(crypten_single):
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.5, 2.0], [1.0, 1.0, -1.0]])
    plain = mpc.logit_margin_uncertainty(logits)
    assert torch.allclose(plain, torch.tensor([-2.0, -0.5, 0.0]))  # second - top, tie at the top = 0
    for method in ("pairwise", "log_reduction"):
        enc = mpc.logit_margin_uncertainty(crypten_single.cryptensor(logits[:2]), method).get_plain_text()
        assert torch.allclose(enc, plain[:2], atol=1e-2)
    with pytest.raises(InputError, match="max_method"):
        mpc.logit_margin_uncertainty(logits, "sort")
    with pytest.raises(InputError, match="C >= 2"):
        mpc.logit_margin_uncertainty(torch.zeros(3, 1))


def test_measure_rejects_unknown_reveal():
    with pytest.raises(InputError, match="reveal must be one of"):
        mpc.measure_mpc_costs({"floor": mpc.EntropyOnly()}, torch.zeros(2, 16, 4), reveal="softmax")


def test_secure_entropy_needs_the_logit_floor_when_logits_spread_past_the_exp_range(crypten_single):
    """CrypTen's exp (1 + x/256)^256 wraps below x = -256: logits 600 apart gave a garbage entropy
    (experiment 01's full preset met it on one seed); flooring the shifted logits at
    secure_logit_floor keeps the secret-shared entropy at the plaintext one."""
    crypten = crypten_single
    logits = torch.tensor([[0.0, -600.0, 1.0, -5.0], [3.0, 2.0, -400.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    exact = entropy_from_logits(logits)
    floor = mpc.secure_logit_floor(crypten)
    assert 1 - 2 ** crypten.cfg.functions.exp_iterations < floor < -16 * math.log(2)  # in the exp's range
    assert torch.allclose(entropy_from_logits(logits, logit_floor=floor), exact, atol=1e-6)  # plaintext: no change
    unfloored = entropy_from_logits(crypten.cryptensor(logits)).get_plain_text()
    assert not torch.allclose(unfloored, exact, atol=0.05)  # the failure the floor prevents
    floored = entropy_from_logits(crypten.cryptensor(logits), logit_floor=floor).get_plain_text()
    assert torch.allclose(floored, exact, atol=0.02)
