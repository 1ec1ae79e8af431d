"""Font completion through graphs (arXiv:2108.12965): outline sampling, rasters, padding, categorical BN,
model shapes and the graph interface."""
import numpy as np
import pytest
import torch

from honed.core.errors import InputError
from honed.data.font_glyphs import (END, allocate, glyph_polygons, make_font_glyphs, rasterize, rewind_pad,
                                    sample_outline, split_graph, styled_contours)
from honed.generative.font_graph import (CategoricalBatchNorm, FontGraphModel, Img2ImgModel, complete_font,
                                         contour_count, graph_loss, interpolate_styles, move_points, one_hot_flags)


@pytest.mark.parametrize("char,contours", [("A", 2), ("B", 3), ("E", 1), ("O", 2)])
def test_sampler_gives_exactly_n_points_and_one_end_per_contour(char, contours):
    polys = styled_contours("DejaVuSans.ttf", char)
    feats, flags = sample_outline(polys, 64)
    assert feats.shape == (64, 4) and flags.shape == (64,)
    assert len(polys) == contours and int((flags == END).sum()) == contours and flags[-1] == END
    assert np.allclose(np.linalg.norm(feats[:, 2:], axis=1), 1.0, atol=1e-5)  # unit tangents
    assert feats[:, :2].min() >= 0 and feats[:, :2].max() <= 1


def test_allocate_is_proportional_with_a_floor():
    assert allocate([1.0, 1.0], 10) == [5, 5]
    assert allocate([9.0, 1.0], 12, minimum=3) == [8, 4]  # 3 + 6 * 0.9 = 8.4 -> 8; 3 + 0.6 -> 4 (largest remainder)
    with pytest.raises(InputError):
        allocate([1.0] * 5, 10)


@pytest.mark.parametrize("char", list("ABHKOPRS"))
def test_raster_of_the_sampled_outline_reproduces_the_glyph(char):
    polys = styled_contours("DejaVuSans.ttf", char)
    feats, flags = sample_outline(polys, 64)
    truth, again = rasterize(polys, 32) > 0.5, rasterize(split_graph(feats, flags), 32) > 0.5
    assert (truth & again).sum() / (truth | again).sum() > 0.9


def test_even_odd_fill_leaves_the_hole_of_o_empty():
    image = rasterize(styled_contours("DejaVuSans.ttf", "O"), 32)
    assert image[16, 16] == 0 and image.max() == 1


def test_rewind_padding_is_length_n_and_palindromic_per_period():
    seq = torch.arange(5)
    padded = rewind_pad(seq, 23)
    assert len(padded) == 23
    assert torch.equal(padded[:10], torch.cat([seq, seq.flip(0)])) and torch.equal(padded[:10], padded[:10].flip(0))
    assert torch.equal(padded[10:20], padded[:10])
    with pytest.raises(InputError):
        rewind_pad(seq[:0], 4)


def test_a_font_without_the_glyph_is_refused_in_one_line():
    glyph_polygons.cache_clear()
    with pytest.raises(InputError, match="no glyph"):
        glyph_polygons("DejaVuSansDisplay.ttf", "A")
    with pytest.raises(InputError, match="not found"):
        glyph_polygons("NoSuchFont.ttf", "A")


def test_categorical_bn_selects_different_affine_params_per_character():
    bn = CategoricalBatchNorm(3, 4)
    with torch.no_grad():
        bn.gamma.weight.copy_(torch.arange(12.0).view(4, 3))
        bn.beta.weight.copy_(-torch.arange(12.0).view(4, 3))
    bn.eval()  # running stats 0 / 1: the output is gamma[c] * x + beta[c]
    x = torch.ones(2, 3, 2, 2)
    out = bn(x, torch.tensor([1, 3]))
    expected0 = torch.tensor([3.0, 4, 5]) / (1 + bn.norm.eps) ** 0.5 - torch.tensor([3.0, 4, 5])
    assert torch.allclose(out[0, :, 0, 0], expected0, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def tiny_models():
    torch.manual_seed(0)
    return FontGraphModel(image_size=16, num_chars=3, style_dim=8, n_points=16), Img2ImgModel(16, 3, 8)


def test_models_map_a_reference_to_the_target_character():
    graph, img2img = tiny_models()
    ref, chars = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    image, feats, logits = graph(ref, chars)
    assert image.shape == (4, 1, 16, 16) and feats.shape == (4, 16, 4) and logits.shape == (4, 16, 3)
    assert img2img(ref, chars).shape == (4, 1, 16, 16)
    assert 0 <= image.min() and image.max() <= 1 and feats[..., :2].min() >= 0
    assert isinstance(graph.encoder, type(img2img.encoder)) and isinstance(graph.decoder, type(img2img.decoder))
    assert sum(p.numel() for p in graph.encoder.parameters()) == sum(p.numel() for p in img2img.encoder.parameters())
    flags = torch.zeros(4, 16, dtype=torch.long)
    loss = graph_loss(feats, logits, feats.detach(), flags)
    assert loss > 0 and torch.isfinite(loss)
    assert contour_count(one_hot_flags(torch.tensor([[0, 1, 0, 0, 1]]))).tolist() == [2]


def test_bad_inputs_are_refused():
    graph, _ = tiny_models()
    with pytest.raises(InputError, match="glyph images"):
        graph(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="target characters"):
        graph(torch.rand(2, 1, 16, 16), torch.tensor([0, 5]))
    with pytest.raises(InputError, match="power of two"):
        FontGraphModel(image_size=20)


def test_graph_interface_moves_points_and_interpolates_styles():
    graph, _ = tiny_models()
    graph.train()
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    done = complete_font(graph, a, torch.arange(3))
    assert done["images"].shape == (3, 1, 16, 16) and done["features"].shape == (3, 16, 4)
    feats, logits = done["features"][1], done["flag_logits"][1]
    edited, image = move_points(graph, feats, logits, 1, [0, 3], (0.05, -0.05))
    moved = torch.tensor([0.05, -0.05])
    assert torch.allclose(edited[[0, 3], :2], (feats[[0, 3], :2] + moved).clamp(0, 1))
    assert torch.equal(edited[1], feats[1]) and image.shape == (1, 16, 16)
    mix = interpolate_styles(graph, a, b, 2, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(mix["images"][0], done["images"][2], atol=1e-5)
    assert graph.training  # modes restored
    with pytest.raises(InputError, match="indices"):
        move_points(graph, feats, logits, 1, [99], (0.0, 0.0))
    with pytest.raises(InputError, match="alphas"):
        interpolate_styles(graph, a, b, 0, torch.tensor([1.5]))


def test_dataset_shapes():
    data = make_font_glyphs(("DejaVuSans.ttf",), ((1.0, 0.0),), "AB", n_points=32, size=16)
    assert data.images.shape == (1, 2, 1, 16, 16) and data.points.shape == (1, 2, 32, 4)
    assert data.contours.tolist() == [[2, 3]]
