"""Tests of DASR (arXiv:2002.00185): the card's honest unit tests plus hand-computed oracles."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.vision.dasr import (DASR, ellipse_box, find_peaks, layerwise_backprop, peak_response_map,
                               pool_regions)


def conv_only_net(seed: int, channels=(3, 4, 5, 2)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(channels, channels[1:])]
    return nn.Sequential(*layers).eval()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), stride=st.sampled_from([1, 2]))
def test_patched_conv_backward_conserves_gradient_sum(seed, stride):
    net = conv_only_net(seed)
    net[1].stride = (stride, stride)
    for conv in net:  # positive weights keep every normaliser positive, so mass is conserved exactly
        conv.weight.data.abs_()
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    with layerwise_backprop(net, eps=1e-12):
        out = net(x)
    g_out = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    (g_in,) = torch.autograd.grad(out, x, g_out)
    assert torch.allclose(g_in.sum((1, 2, 3)), g_out.sum((1, 2, 3)), rtol=1e-4)
    assert (g_in >= 0).all()


def test_conservation_with_mixed_sign_weights_where_normaliser_positive():
    conv = nn.Conv2d(1, 1, 1, bias=False).eval()
    conv.weight.data.fill_(-1.0)  # W+ = 0 -> normaliser 0 everywhere -> no gradient passes
    x = torch.rand(1, 1, 3, 3).requires_grad_()
    with layerwise_backprop(conv):
        out = conv(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


def test_patched_forward_equals_unpatched_output_and_restores():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding="same"), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 4, 3, stride=2, padding=1)).eval()
    x = torch.randn(2, 3, 12, 12)
    plain = net(x)
    (plain_grad,) = torch.autograd.grad(net(x.requires_grad_()).sum(), x)
    with layerwise_backprop(net):
        patched = net(x)
        (patched_grad,) = torch.autograd.grad(patched.sum(), x)
    assert torch.allclose(plain, patched, atol=1e-6)
    assert not torch.allclose(plain_grad, patched_grad, atol=1e-3)  # the backward did change
    (after,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.allclose(after, plain_grad) and "forward" not in net[0].__dict__


def test_offset_by_layer_input_minimum():
    """Hand oracle: 1x1 conv, weight 2, input [-1, 1]: o = -1, shifted [0, 2], norm = [0, 4]; g_out [1, 1]
    -> ratio [0, 1/4] -> g_in = shifted * 2 * ratio = [0, 1]."""
    conv = nn.Conv2d(1, 1, 1, bias=False).eval()
    conv.weight.data.fill_(2.0)
    x = torch.tensor([[[[-1.0, 1.0]]]], requires_grad=True)
    with layerwise_backprop(conv, eps=1e-12):
        (g,) = torch.autograd.grad(conv(x).sum(), x)
    assert torch.allclose(g, torch.tensor([[[[0.0, 1.0]]]]))


def test_layerwise_backprop_refuses_training_mode():
    with pytest.raises(InputError):
        with layerwise_backprop(nn.Conv2d(1, 1, 1).train()):
            pass


def test_peak_finder_returns_planted_maxima_above_mean_and_skips_border():
    response = torch.zeros(10, 10)
    planted = {(2, 3): 5.0, (6, 7): 4.0, (7, 2): 3.0}
    for (r, c), v in planted.items():
        response[r, c] = v
    response[0, 5] = 9.0      # border maximum: skipped
    response[4, 4] = -1.0     # not above mean
    response[5, 5] = 1e-4     # a local max but below the mean (mean > 0.1)
    rc, scores = find_peaks(response - 0.0)
    assert [tuple(p) for p in rc.tolist()] == [(2, 3), (6, 7), (7, 2)]
    assert scores.tolist() == [5.0, 4.0, 3.0]
    rc_all, _ = find_peaks(response, skip_border=False)
    assert (0, 5) in [tuple(p) for p in rc_all.tolist()]


def test_peak_finder_needs_window_maximum():
    response = torch.zeros(7, 7)
    response[3, 3], response[3, 4] = 2.0, 1.5  # (3, 4) is above mean but not a 3x3 maximum
    rc, _ = find_peaks(response)
    assert rc.tolist() == [[3, 3]]


def test_ellipse_box_recovers_two_sigma_of_axis_aligned_gaussian():
    gen = torch.Generator().manual_seed(0)
    mu_x, mu_y, sx, sy = 40.0, 25.0, 7.0, 3.0
    pts = torch.randn(400_000, 2, generator=gen) * torch.tensor([sx, sy]) + torch.tensor([mu_x, mu_y])
    hist = torch.zeros(50, 80)
    cols, rows = pts[:, 0].floor().long(), pts[:, 1].floor().long()
    ok = (cols >= 0) & (cols < 80) & (rows >= 0) & (rows < 50)
    hist.index_put_((rows[ok], cols[ok]), torch.ones(int(ok.sum())), accumulate=True)
    box = ellipse_box(hist)
    # binning adds 1/12 px^2 of variance; tolerance covers it and sampling noise
    expected = torch.tensor([mu_x - 2 * sx, mu_y - 2 * sy, mu_x + 2 * sx, mu_y + 2 * sy])
    assert torch.allclose(box, expected, atol=0.15), box


def test_ellipse_box_of_rotated_blob_bounds_the_rotated_ellipse():
    """A 45-degree line of pixels: variance along it only; the box half-extents are 2*std of x and of y."""
    w = torch.zeros(20, 20)
    for i in range(5, 15):
        w[i, i] = 1.0
    box = ellipse_box(w)
    std = torch.arange(5, 15, dtype=torch.float64).std(unbiased=False).item()
    assert torch.allclose(box, torch.tensor([10 - 2 * std, 10 - 2 * std, 10 + 2 * std, 10 + 2 * std]).float(),
                          atol=1e-4)


def test_ellipse_box_clips_and_rejects_empty():
    w = torch.zeros(8, 8)
    w[0, 0], w[0, 7] = 1.0, 1.0
    box = ellipse_box(w)
    assert box.tolist() == [0.0, 0.5, 8.0, 0.5]  # x spread clipped, no y spread
    with pytest.raises(InputError):
        ellipse_box(torch.zeros(4, 4))


def test_peak_response_map_keeps_top_percentile_and_normalises():
    grad = torch.zeros(3, 10, 10)
    grad[0] = torch.arange(100.0).view(10, 10) - 50  # RGB sum = channel 0
    prm = peak_response_map(grad, 0.95)
    kept = torch.nonzero(prm.flatten()).flatten().tolist()
    assert kept == [95, 96, 97, 98, 99]  # quantile 0.95 of 0..99 (minus 50) is 94.05 + ...
    assert torch.isclose(prm.sum(), torch.tensor(1.0))


def test_pool_regions_averages_inside_the_box():
    feat = torch.zeros(2, 4, 4)
    feat[0, :3, :3] = 1.0   # covers the top-left quadrant plus the cells bilinear sampling touches
    feat[1] = 1.0
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # top-left quadrant of a 32x32 image (2x2 cells)
    desc = pool_regions(feat, box, (32, 32))
    assert torch.allclose(desc, torch.tensor([[1.0, 1.0]]) / 2 ** 0.5)
    whole = pool_regions(feat, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), (32, 32), samples=8)
    assert torch.allclose(whole, torch.nn.functional.normalize(torch.tensor([[9 / 16, 1.0]]), dim=1))


def test_dasr_localises_a_bright_square_with_a_positive_filter_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(0.1)
                m.bias.zero_()
    image = torch.zeros(3, 32, 32)
    image[:, 12:20, 8:16] = 1.0
    dasr = DASR(net, net[5], net[3])
    boxes, scores = dasr.regions(image)
    assert len(boxes) >= 1
    x0, y0, x1, y1 = boxes[0].tolist()
    assert 4 <= x0 <= 12 and 12 <= x1 <= 20 and 8 <= y0 <= 16 and 16 <= y1 <= 24, boxes[0]
    desc = dasr.describe(image, boxes)
    assert desc.shape == (len(boxes), 4) and torch.allclose(desc.norm(dim=1), torch.ones(len(boxes)))


def test_dasr_regions_on_the_test_device_match_the_cpu(device):
    """Issue 18: peaks, saliency, ellipse boxes and descriptors stay on the image's device."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    image = torch.rand(3, 32, 32)
    boxes, scores = DASR(net, net[5], net[3]).regions(image)
    moved = DASR(net.to(device), net[5], net[3])
    on_boxes, on_scores = moved.regions(image.to(device))
    assert {on_boxes.device, on_scores.device, moved.describe(image.to(device), on_boxes).device} == {device}
    assert torch.allclose(on_boxes.cpu(), boxes, atol=1e-4) and torch.allclose(on_scores.cpu(), scores, atol=1e-5)
    assert ellipse_box(torch.rand(5, 7, device=device)).device == device
