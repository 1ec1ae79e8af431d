"""MPCFormer-style baseline proxy of SelectFormer (arXiv:2310.02373): 2Quad attention, Quad GELU."""
import pytest
import torch

from honed.core.errors import InputError
from honed.private.mpcformer import MPCFormerProxy, make_mpcformer_proxy
from honed.private.proxy_selection import TinyTransformer, make_proxy


def test_two_quad_rows_sum_to_one_and_match_hand_values():
    proxy = MPCFormerProxy(quad_shift=1.0)
    scores = torch.tensor([[0.0, 1.0]])  # (0+1)^2 = 1, (1+1)^2 = 4 -> 1/5, 4/5
    assert torch.allclose(proxy.row_softmax(scores), torch.tensor([[0.2, 0.8]]))


def test_quad_activation_is_the_mpcformer_polynomial():
    x = torch.tensor([-2.0, 0.0, 2.0])
    assert torch.allclose(MPCFormerProxy().activation(x), 0.125 * x ** 2 + 0.25 * x + 0.5)


def test_proxy_copies_target_weights_and_scales_and_runs():
    torch.manual_seed(0)
    target = TinyTransformer(n_blocks=2)
    target.norm_scales.fill_(3.0)
    proxy = make_mpcformer_proxy(target)
    assert all(torch.equal(proxy.params[k], v) for k, v in target.params.items())
    assert torch.equal(proxy.norm_scales, target.norm_scales)
    logits = proxy(torch.rand(5, 64))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()


def test_refuses_an_emulated_proxy_as_target():
    with pytest.raises(InputError):
        make_mpcformer_proxy(make_proxy(TinyTransformer(n_blocks=2), 1, 2))


def test_forward_under_crypten_matches_plaintext():
    from honed.private import mpc
    from honed.private.proxy_selection import calibrate_norm_scales, image_tokens

    crypten = mpc.import_crypten()
    crypten.init()
    try:
        torch.manual_seed(0)
        target = TinyTransformer(n_blocks=2)
        x = torch.rand(4, 64)
        calibrate_norm_scales(target, x)
        proxy = make_mpcformer_proxy(target)
        params = {k: crypten.cryptensor(v) for k, v in proxy.mpc_parameters().items()}
        enc = proxy.forward_with(params, crypten.cryptensor(image_tokens(x))).get_plain_text()
        with torch.no_grad():
            assert torch.allclose(enc, proxy(x), atol=5e-2)
    finally:
        crypten.uninit()
