"""DoReFa quantisers and the low-bit student of role-wise KD (arXiv:2004.08861, DoReFa arXiv:1606.06160)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from honed.core.errors import InputError
from honed.distill.dorefa import (QuantConv2d, QuantLinear, dorefa_activation, dorefa_weight, quantize_k,
                                  quantize_student)


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_quantize_k_hand_values_and_ste_gradient():
    x = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.0], requires_grad=True)
    q = quantize_k(x, 2)  # grid {0, 1/3, 2/3, 1}
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]))
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones(6))  # straight through


def test_weight_quantiser_matches_the_formula():
    w = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.0])
    t = torch.tanh(w)
    expected = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * 3) / 3 - 1
    torch.testing.assert_close(dorefa_weight(w, 2), expected)
    assert dorefa_weight(w, 32) is w


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(0, 10_000))
def test_at_most_2_to_the_k_weight_values_per_layer(bits, seed):
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    q = dorefa_weight(w, bits)
    assert len(torch.unique(q)) <= 2 ** bits
    assert q.min() >= -1 and q.max() <= 1


def test_activation_quantiser_clips_and_passes_gradient_inside_only():
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5], requires_grad=True)
    y = dorefa_activation(x, 2)
    torch.testing.assert_close(y, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_student_keeps_first_conv_and_last_fc_full_precision_and_copies_weights():
    teacher = cnn()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = quantize_student(teacher, 2, 2)
    assert type(student[0]) is nn.Conv2d and type(student[10]) is nn.Linear
    assert isinstance(student[3], QuantConv2d) and isinstance(student[8], QuantLinear)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # teacher untouched
    assert student[3].weight.data_ptr() != teacher[3].weight.data_ptr()


def test_student_layers_use_at_most_4_weight_values_and_gradients_reach_every_weight():
    student = quantize_student(cnn(), 2, 2)
    for layer in (student[3], student[8]):
        assert len(torch.unique(layer.quantized_weight())) <= 4
    x = torch.rand(6, 1, 5, 5)
    student(x).pow(2).sum().backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_student_output_changes_with_quantisation_but_not_with_32_bits():
    teacher = cnn().eval()
    x = torch.rand(4, 1, 5, 5)
    same = quantize_student(teacher, 32, 32).eval()
    torch.testing.assert_close(same(x), teacher(x))
    low = quantize_student(teacher, 2, 2).eval()
    assert not torch.allclose(low(x), teacher(x))


def test_bad_bits_and_models_raise():
    with pytest.raises(InputError, match="bits"):
        quantize_k(torch.zeros(2), 0)
    with pytest.raises(InputError, match="Conv2d"):
        quantize_student(nn.Sequential(nn.Linear(2, 2)))
