"""Font completion through a graph (arXiv:2108.12965) in your own loop: from one reference glyph, generate
the other letters of the same style, passing through an editable outline graph, then edit it.

Stages as the card recommends: img -> graph, graph -> img from true graphs, then the full cycle.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F

from honed.data.font_glyphs import make_font_glyphs
from honed.generative.font_graph import (FontGraphModel, complete_font, graph_loss, interpolate_styles, move_points,
                                         one_hot_flags)

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
torch.manual_seed(0)

fonts = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "cmr10.ttf", "STIXGeneral.ttf") if TINY else (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "cmr10.ttf", "cmss10.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf")
letters = "ABEHOR" if TINY else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
data = make_font_glyphs(fonts, ((1.0, 0.0), (0.8, 0.25)), letters, n_points=64, size=32)
train, held_out = data.subset(list(range(len(data.styles) - 2))), data.subset([len(data.styles) - 2])
s, ell = train.images.shape[:2]

model = FontGraphModel(image_size=32, num_chars=ell, n_points=64)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for stage, epochs in (("graph", 2 if TINY else 15), ("render", 2 if TINY else 15), ("cycle", 2 if TINY else 30)):
    for _ in range(epochs):
        style, b = torch.randint(s, (64,)), torch.randint(ell, (64,))
        ref, target = train.images[style, torch.randint(ell, (64,))], train.images[style, b]
        if stage == "graph":
            loss = graph_loss(*model.graph(ref, b), train.points[style, b], train.flags[style, b])
        elif stage == "render":
            loss = F.mse_loss(model.render(train.points[style, b], one_hot_flags(train.flags[style, b]), b), target)
        else:
            image, feats, logits = model(ref, b)
            loss = F.mse_loss(image, target) + graph_loss(feats, logits, train.points[style, b], train.flags[style, b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"stage {stage}: last loss {loss.item():.4f}")

out = complete_font(model, held_out.images[0, 0][None], torch.arange(ell))  # from the held-out style's first letter
print(f"completed {ell} glyphs of {held_out.styles[0]}, MSE {F.mse_loss(out['images'], held_out.images[0]).item():.4f}")
edited, glyph = move_points(model, out["features"][1], out["flag_logits"][1], 1, [0, 1, 2], (0.05, 0.0))
mix = interpolate_styles(model, train.images[0, 0][None], held_out.images[0, 0][None], 1, torch.linspace(0, 1, 5))
print(f"edited glyph ink {glyph.mean().item():.3f}; {len(mix['images'])} interpolated glyphs")
