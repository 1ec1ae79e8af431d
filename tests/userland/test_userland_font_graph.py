"""Font completion through graphs (arXiv:2108.12965) in a plain loop, with an encoder defined here."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.data.font_glyphs import make_font_glyphs
from honed.generative.font_graph import FontGraphModel, complete_font, graph_loss, move_points


class UserEncoder(nn.Module):
    """A user's own glyph encoder: 16x16 glyph -> 8-d style."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        return self.net(x)


def test_plain_loop_with_a_user_encoder(device):
    data = make_font_glyphs(("DejaVuSans.ttf", "DejaVuSerif.ttf"), ((1.0, 0.0),), "ABC", n_points=16, size=16)
    images, points, flags = (t.flatten(0, 1).to(device) for t in (data.images, data.points, data.flags))
    chars = torch.arange(3, device=device).repeat(2)
    torch.manual_seed(0)
    model = FontGraphModel(image_size=16, num_chars=3, style_dim=8, n_points=16)
    model.encoder = UserEncoder()
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    refs = images[torch.tensor([0, 0, 0, 3, 3, 3], device=device)]  # reference 'A' of each font
    for _ in range(3):
        image, feats, logits = model(refs, chars)
        loss = F.mse_loss(image, images) + graph_loss(feats, logits, points, flags)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = complete_font(model, refs[:1], torch.arange(3, device=device))
    edited, glyph = move_points(model, out["features"][0], out["flag_logits"][0], 0, [2], (0.1, 0.0))
    assert glyph.shape == (1, 16, 16) and glyph.device.type == device.type


def test_bad_inputs_give_one_clear_error(device):
    model = FontGraphModel(image_size=16, num_chars=3, style_dim=8, n_points=16).to(device)
    with pytest.raises(InputError, match="one glyph"):
        complete_font(model, torch.rand(2, 1, 16, 16, device=device), torch.arange(3, device=device))
    with pytest.raises(InputError, match="no glyph"):
        make_font_glyphs(("DejaVuSansDisplay.ttf",), ((1.0, 0.0),), "A")
