"""CrypTen harness for SelectFormer (arXiv:2310.02373): shim, fixed-point agreement, missing extra."""
import builtins

import pytest
import torch

from honed.core.errors import InputError, MissingExtraError
from honed.private import mpc
from honed.private.proxy_selection import TinyTransformer, entropy_from_logits, image_tokens, make_proxy


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
