"""FFConv (arXiv:2102.03494): the factorised layer, its SVD initialisation and model conversion."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.private.ffconv import FFConv, Square, convert_to_ffconv, svd_factors


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 3), st.integers(2, 12), st.sampled_from([(1, 0), (3, 1), (3, 0)]))
def test_full_rank_svd_init_equals_the_original_conv(seed, c_in, c_out, kernel_pad):
    kernel, pad = kernel_pad
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=pad).double()
    layer = FFConv.from_conv(conv, min(c_out, c_in * kernel * kernel))
    x = torch.randn(2, c_in, 6, 6, dtype=torch.float64)
    assert torch.allclose(layer(x), conv(x), atol=1e-10)


def test_low_rank_factors_are_the_truncated_svd():
    torch.manual_seed(0)
    weight = torch.randn(8, 2, 3, 3, dtype=torch.float64)
    spatial, pointwise = svd_factors(weight, 3)
    approx = pointwise.reshape(8, 3) @ spatial.reshape(3, -1)
    s = torch.linalg.svdvals(weight.reshape(8, -1))
    # Eckart-Young: the Frobenius error of the best rank-3 approximation is sqrt(sum of the rest)
    assert torch.isclose(torch.linalg.norm(weight.reshape(8, -1) - approx), s[3:].square().sum().sqrt())
    assert spatial.shape == (3, 2, 3, 3) and pointwise.shape == (8, 3, 1, 1)


def test_layer_shapes_bias_placement_and_stride():
    layer = FFConv(3, 16, 3, rank=4, stride=2, padding=1)
    assert layer.spatial.bias is None and layer.pointwise.bias is not None
    assert layer(torch.zeros(1, 3, 8, 8)).shape == (1, 16, 4, 4)


def test_bad_rank_and_input_raise_one_line_errors():
    with pytest.raises(InputError, match="rank"):
        FFConv(1, 16, 3, rank=10)  # C_in*d*d = 9
    with pytest.raises(InputError, match="rank"):
        FFConv(2, 4, 3, rank=0)
    with pytest.raises(InputError, match="expects"):
        FFConv(2, 4, 3, rank=2)(torch.zeros(1, 3, 5, 5))


def test_convert_replaces_only_the_named_convs_and_keeps_the_original():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Square(), nn.Conv2d(4, 6, 3, padding=1))
    new = convert_to_ffconv(model, {"2": 6})
    assert isinstance(new[0], nn.Conv2d) and isinstance(new[2], FFConv) and isinstance(model[2], nn.Conv2d)
    x = torch.randn(2, 1, 5, 5)
    assert torch.allclose(new(x), model(x), atol=1e-4)
    with pytest.raises(InputError, match="no Conv2d"):
        convert_to_ffconv(model, {"7": 2})


def test_square_activation_is_x_squared():
    x = torch.tensor([-2.0, -0.5, 0.0, 3.0])
    assert torch.equal(Square()(x), torch.tensor([4.0, 0.25, 0.0, 9.0]))


def test_ffconv_lives_on_the_default_device_when_none_is_given():
    """Issue 18: no CPU default - FFConv built under ``with torch.device(...)`` lives there."""
    with torch.device("meta"):
        layer = FFConv(3, 4, 3, rank=2)
    assert {t.device.type for t in layer.state_dict().values()} == {"meta"}
