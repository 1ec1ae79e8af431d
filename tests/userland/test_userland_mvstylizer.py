"""MVStylizer (arXiv:2005.11630) components on a stylizer defined here, in plain loops: the meta-smoothing
upscaler trained by hand, the pipeline on a clip, warping error, FedAvg of two user models; bad inputs
(a one-frame video, a grey video, a guide the upscaler was not built for) give one InputError and change
nothing."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("cv2")

from honed.core.errors import InputError  # noqa: E402
from honed.data.camera_videos import moving_shapes_clip  # noqa: E402
from honed.vision.meta_upscale import MetaUpscaler  # noqa: E402
from honed.vision.mvstylizer import MVStylizer, fedavg, temporal_warping_error  # noqa: E402


class SepiaNet(nn.Module):
    """A user's tiny stylizer: a 1x1 colour mix plus a 3x3 smoothing conv."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        self.smooth = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.smooth(self.mix(x)))


def test_meta_upscaler_trains_in_a_plain_loop_and_the_pipeline_uses_it(device):
    torch.manual_seed(0)
    stylizer, upscaler = SepiaNet().to(device).eval(), MetaUpscaler(features=4, hidden=16).to(device)
    clip = moving_shapes_clip(6, 32, seed=1).to(device)
    opt = torch.optim.Adam(upscaler.parameters(), lr=1e-4)
    for step in range(3):
        scale = 2.0 + 0.5 * step  # non-integer scales too
        low = F.interpolate(clip, size=(round(32 / scale),) * 2, mode="area")
        with torch.no_grad():
            target, low_styled = stylizer(clip), stylizer(low)
        loss = F.l1_loss(upscaler(low_styled, 32 / low.shape[-1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    upscaler.eval()
    out = MVStylizer(stylizer, upscaler, downscale=2.0, g_max=3)(clip)
    assert out.frames.shape == clip.shape and out.frames.device.type == device.type
    assert 0 <= float(out.frames.min()) and float(out.frames.max()) <= 1
    errors = temporal_warping_error(out.frames, clip)
    assert len(errors) == 5 and all(e >= 0 for e in errors)


def test_fedavg_of_two_user_models_loads_back():
    models = [SepiaNet(), SepiaNet()]
    merged = fedavg([m.state_dict() for m in models], [10, 30])
    expected = 0.25 * models[0].mix.weight + 0.75 * models[1].mix.weight
    target = SepiaNet()
    target.load_state_dict(merged)
    assert torch.allclose(target.mix.weight, expected, atol=1e-6)


def test_bad_inputs_are_refused_and_change_nothing():
    stylizer, upscaler = SepiaNet(), MetaUpscaler(features=4, hidden=8)
    before = {k: v.clone() for k, v in upscaler.state_dict().items()}
    pipeline = MVStylizer(stylizer, upscaler)
    with pytest.raises(InputError, match="at least 2"):
        pipeline(torch.rand(1, 3, 32, 32))
    with pytest.raises(InputError, match="RGB"):
        pipeline(torch.rand(4, 1, 32, 32))
    with pytest.raises(InputError, match="guide"):
        upscaler(torch.rand(1, 3, 8, 8), 2.0, guide=torch.rand(1, 3, 8, 8))
    with pytest.raises(InputError, match="guide=True"):
        MVStylizer(stylizer, upscaler, guide=True)
    assert all(torch.equal(before[k], v) for k, v in upscaler.state_dict().items())
