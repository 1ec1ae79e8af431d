"""MVStylizer (arXiv:2005.11630): the card's honest unit tests on tiny tensors - warping, forward-backward
consistency, key-frame selection, meta-upscaling sizes and identity, FedAvg, interpolation weights - and
one clear error for bad input."""
import math

import pytest
import torch

pytest.importorskip("cv2")

from honed.core.errors import InputError  # noqa: E402
from honed.data.camera_videos import camera_path_clip, fractal_texture, moving_shapes_clip  # noqa: E402
from honed.vision.flow_warp import (FlowCache, backward_warp, consistency_mask, dense_flow,  # noqa: E402
                                    select_keyframes)
from honed.vision.meta_upscale import MetaUpscaler, source_offsets  # noqa: E402
from honed.vision.mvstylizer import (MVStylizer, fedavg, interpolate_frames, nearest_key_copy,  # noqa: E402
                                     temporal_warping_error)


def translated(shift: int, frames: int = 4, size: int = 64) -> torch.Tensor:
    """A video of a fractal texture panning ``shift`` px per frame to the right and down."""
    canvas = fractal_texture(size + shift * frames + 8, torch.Generator().manual_seed(0))
    return torch.stack([canvas[:, 4 + s:4 + s + size, 4 + s:4 + s + size] for s in range(0, shift * frames, shift)])


def test_zero_flow_warp_is_the_identity():
    image = torch.rand(3, 9, 11)
    assert torch.allclose(backward_warp(image, torch.zeros(2, 9, 11)), image, atol=1e-6)


def test_constant_integer_flow_equals_roll_away_from_the_borders():
    image = torch.rand(2, 12, 10)
    flow = torch.zeros(2, 12, 10)
    flow[0], flow[1] = 2.0, -1.0  # sample 2 px to the right and 1 px up
    warped = backward_warp(image, flow)
    rolled = torch.roll(image, shifts=(1, -2), dims=(1, 2))  # out(y, x) = in(y - 1, x + 2)
    assert torch.allclose(warped[:, 1:, :-2], rolled[:, 1:, :-2], atol=1e-6)


def test_forward_backward_mask_is_all_valid_for_a_pure_translation():
    flow_ab = torch.zeros(2, 16, 16)
    flow_ab[0], flow_ab[1] = 3.0, -2.0
    assert consistency_mask(flow_ab, -flow_ab).all()
    assert not consistency_mask(flow_ab, torch.zeros(2, 16, 16)).any()  # back flow missing: |F_ab| = 3.6 > 1


def test_dis_flow_recovers_a_known_translation_and_warps_back():
    video = translated(shift=2)
    flow = dense_flow(video[1], video[0])  # frame 1 seen in frame 0: content moved by +2 px
    inner = flow[:, 12:-12, 12:-12]
    assert torch.allclose(inner.mean((1, 2)), torch.tensor([2.0, 2.0]), atol=0.2)
    back = backward_warp(video[0], flow)
    assert (back - video[1])[:, 12:-12, 12:-12].abs().mean() < 0.02


def test_keyframe_selector_marks_frame_zero_and_respects_g_max():
    video = translated(shift=1, frames=9)
    sel = select_keyframes(video, tau_key=1.0, g_max=3)  # tau 1.0: only G_max can make key frames
    assert sel.keys == (0, 3, 6)
    assert sel.scores[0] == 0.0 and len(sel.scores) == 9
    still = torch.stack([video[0]] * 5)
    assert select_keyframes(still, tau_key=0.15, g_max=10).keys == (0,)
    assert select_keyframes(still, fixed_interval=2).keys == (0, 2, 4)


def test_meta_upscaler_output_size_for_non_integer_scales():
    model = MetaUpscaler(features=4, hidden=8)
    low = torch.rand(2, 3, 7, 9)
    for r in (1.5, 2.3, 3.7):
        assert model(low, r).shape == (2, 3, round(r * 7), round(r * 9))
    assert model(low, (2.0, 3.0)).shape == (2, 3, 14, 27)


def test_meta_upscaler_with_the_copy_filter_reproduces_its_input_at_scale_one():
    model = MetaUpscaler(features=4, hidden=8, base="none")  # starts at the source-pixel copy filter
    low = torch.rand(1, 3, 6, 5)
    assert torch.allclose(model(low, 1.0), low, atol=1e-6)
    up = model(low, 2.0)  # copy filter at r = 2: nearest-neighbour upscaling (floor(i / r) sources)
    assert torch.allclose(up, low.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-6)
    bicubic = MetaUpscaler(features=4, hidden=8)  # base bicubic, zero filters: exactly bicubic
    ref = torch.nn.functional.interpolate(low, size=(15, 12), mode="bicubic", align_corners=False)
    assert torch.allclose(bicubic(low, (2.5, 2.4)), ref, atol=1e-6)


def test_meta_upscaler_conv_and_per_pixel_paths_agree():
    torch.manual_seed(0)
    model = MetaUpscaler(features=4, hidden=8, base="none")
    torch.nn.init.normal_(model.weights[-1].weight, std=0.1)
    low = torch.rand(2, 3, 5, 6)
    feats = torch.cat([low, model.extract(low)], 1)
    for r in (2.0, 2.3):
        src_h, off_h = source_offsets(5, round(r * 5), r, low.device)
        src_w, off_w = source_offsets(6, round(r * 6), r, low.device)
        uh, ih = torch.unique(off_h, return_inverse=True)
        uw, iw = torch.unique(off_w, return_inverse=True)
        kernels = model.filters(uh, uw, 1 / r)
        a = model._by_conv(feats, kernels, src_h, ih, src_w, iw)
        b = model._by_pixel(feats, kernels, src_h, ih, src_w, iw)
        assert torch.allclose(a, b, atol=1e-5)


def test_source_offsets_follow_the_i_over_r_convention():
    src, off = source_offsets(4, 6, 1.5, torch.device("cpu"))
    assert src.tolist() == [0, 0, 1, 2, 2, 3]  # floor(i / 1.5) for i = 0..5
    assert torch.allclose(off, torch.tensor([0, 2 / 3, 1 / 3, 0, 2 / 3, 1 / 3]), atol=1e-6)


def test_fedavg_is_the_count_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(5)}
    b = {"w": torch.tensor([4.0, 8.0]), "steps": torch.tensor(9)}
    merged = fedavg([a, b], [1, 3])
    assert torch.allclose(merged["w"], torch.tensor([(1 + 12) / 4, (2 + 24) / 4]))
    assert merged["steps"].item() == 5  # integer buffers are taken from the first state
    with pytest.raises(InputError, match="one count per state"):
        fedavg([a, b], [1])
    with pytest.raises(InputError, match="count"):
        fedavg([a, b], [1, 0])


def test_interpolation_blends_key_frames_by_temporal_distance():
    video = torch.stack([fractal_texture(32, torch.Generator().manual_seed(1))] * 5)  # a still video
    keys = torch.stack([torch.full((3, 32, 32), 0.2), torch.full((3, 32, 32), 0.6)])
    out = interpolate_frames(video, [0, 4], keys)
    assert torch.allclose(out[1], torch.full((3, 32, 32), 0.75 * 0.2 + 0.25 * 0.6), atol=1e-5)
    assert torch.allclose(out[0], keys[0]) and torch.allclose(out[4], keys[1])
    streaming = interpolate_frames(video, [0, 4], keys, streaming=True)
    assert torch.allclose(streaming[3], keys[0], atol=1e-5)  # streaming: only the previous key frame
    assert nearest_key_copy(5, [0, 4], keys)[3].mean().item() == pytest.approx(0.6)


def test_temporal_warping_error_is_zero_for_a_warp_consistent_output():
    video = translated(shift=1, frames=4)
    assert max(temporal_warping_error(video, video)) < 0.02  # the video itself follows its own flow
    assert max(temporal_warping_error(torch.rand_like(video), video)) > 0.2


def test_pipeline_runs_on_a_clip_with_an_identity_stylizer():
    clip = moving_shapes_clip(6, 32, seed=0)
    out = MVStylizer(lambda x: x, downscale=2.0, g_max=3)(clip)
    assert out.frames.shape == clip.shape and out.selection.keys[0] == 0
    assert out.key_frames_low.shape == (len(out.selection.keys), 3, 16, 16)
    assert (out.frames - clip).abs().mean() < 0.1  # identity stylizer: the pipeline roughly returns the clip


def test_bad_inputs_give_one_clear_error():
    with pytest.raises(InputError, match="at least 2"):
        select_keyframes(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError, match="at least 2"):
        MVStylizer(lambda x: x)(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError, match="RGB"):
        MVStylizer(lambda x: x)(torch.rand(4, 16, 16))
    with pytest.raises(InputError, match="NaN"):
        dense_flow(torch.full((3, 16, 16), math.nan), torch.rand(3, 16, 16))
    with pytest.raises(InputError, match="flow must be"):
        backward_warp(torch.rand(3, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(InputError, match="at least 2 frames"):
        camera_path_clip(torch.rand(3, 64, 64), frames=1, size=32, seed=0)
    with pytest.raises(InputError, match="FlowCache of this video"):
        temporal_warping_error(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16), flows=FlowCache(torch.rand(3, 3, 16, 16)))
