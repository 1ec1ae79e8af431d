"""29-font-graph: font completion through an intermediate graph vs image-to-image (Font Completion and
Manipulation by Cycling Between Multi-Modality Representations, arXiv:2108.12965).

Data: A-Z of the fonts that ship with matplotlib (DejaVu, STIX, Computer Modern), each under three affine
styles (x-scale, shear), as rasters and N-point outline graphs (TextPath). Every style of 4 randomly
chosen fonts is held out. Both models train on pairs (reference glyph of char a, target glyph of char b,
same style; decoders conditioned on b) with the same encoder / decoder sizes, batches and total epochs:
the graph model stages img -> graph, graph -> img and the full cycle (image + graph losses); img2img
trains its image loss throughout. Each held-out style is completed from its single reference glyph:
MSE, PSNR and SSIM of all 26 glyphs, and whether the predicted flags give the right contour count.
The per-character mean training glyph (style-agnostic) is the floor both must beat.
"""
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, Precondition, SeedOutput, register_experiment
from honed.data.font_glyphs import FONT_FILES, LETTERS, TRANSFORMS, FontGlyphs, make_font_glyphs, split_fonts
from honed.generative.font_graph import (FontGraphModel, Img2ImgModel, complete_font, contour_count, graph_loss,
                                         one_hot_flags)
from honed.generative.image_metrics import mse_per_image, psnr_per_image, ssim_per_image


@dataclass(frozen=True)
class FontGraphConfig(ExperimentConfig):
    """Defaults are the ``small`` preset. ``full`` uses 64x64 rasters, 3x the epochs and 3 seeds (expected
    about 12x the small preset's time: 4x pixels, 3x epochs)."""

    seeds: tuple[int, ...] = (0, 1)
    threads: int = 1
    image_size: int = 32
    n_points: int = 64
    n_fonts: int = len(FONT_FILES)
    n_test_fonts: int = 4
    letters: str = LETTERS
    split_seed: int = 0
    style_dim: int = 64
    batch_size: int = 64
    lr: float = 1e-3
    graph_epochs: int = 10  # stage 1 of the graph model: img -> graph
    render_epochs: int = 10  # stage 2: graph -> img from ground-truth graphs
    cycle_epochs: int = 20  # stage 3: full cycle; img2img trains the sum of the three
    reference_char: str = "A"

    @classmethod
    def smoke(cls) -> "FontGraphConfig":
        return replace(cls(), seeds=(0,), n_fonts=4, n_test_fonts=1, letters="ABEHOR", graph_epochs=1,
                       render_epochs=1, cycle_epochs=1)

    @classmethod
    def full(cls) -> "FontGraphConfig":
        return replace(cls(), seeds=(0, 1, 2), image_size=64, graph_epochs=30, render_epochs=30, cycle_epochs=60)

    def validate(self) -> None:
        if not 2 <= self.n_fonts <= len(FONT_FILES) or not 1 <= self.n_test_fonts < self.n_fonts:
            raise ConfigError(f"need 2 <= n_fonts <= {len(FONT_FILES)} and 1 <= n_test_fonts < n_fonts")
        if self.reference_char not in self.letters or len(set(self.letters)) != len(self.letters):
            raise ConfigError("letters must be distinct and contain reference_char")
        for name in ("graph_epochs", "render_epochs", "cycle_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    @property
    def epochs(self) -> int:
        return self.graph_epochs + self.render_epochs + self.cycle_epochs


def load_glyphs(cfg: FontGraphConfig) -> tuple[FontGlyphs, FontGlyphs]:
    """(training styles, held-out styles): all transforms of the held-out fonts are held out."""
    fonts = FONT_FILES[:cfg.n_fonts]
    train_fonts, test_fonts = split_fonts(fonts, cfg.n_test_fonts, cfg.split_seed)
    data = make_font_glyphs(fonts, TRANSFORMS, cfg.letters, cfg.n_points, cfg.image_size)
    font_of = [name.split("@")[0] for name in data.styles]
    return (data.subset([i for i, f in enumerate(font_of) if f in train_fonts]),
            data.subset([i for i, f in enumerate(font_of) if f in test_fonts]))


def batches(train: FontGlyphs, batch_size: int, epoch: int, seed: int, device: torch.device):
    """Pairs (reference glyph of char a, target char b, its image, graph features, flags) of the same style,
    every (style, b) once per epoch, a uniform; the order depends on (seed, epoch) only."""
    s, ell = train.images.shape[:2]
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(s * ell, generator=gen)
    refs = torch.randint(ell, (s * ell,), generator=gen)
    for idx in order.split(batch_size):
        style, b, a = idx // ell, idx % ell, refs[idx]
        yield tuple(t.to(device) for t in (train.images[style, a], b, train.images[style, b],
                                           train.points[style, b], train.flags[style, b]))


def stage_loss(model: torch.nn.Module, stage: str, batch: tuple) -> torch.Tensor:
    ref, b, target, points, flags = batch
    if stage == "img2img":
        return F.mse_loss(model(ref, b), target)
    if stage == "graph":
        return graph_loss(*model.graph(ref, b), points, flags)
    if stage == "render":
        return F.mse_loss(model.render(points, one_hot_flags(flags), b), target)
    image, features, logits = model(ref, b)
    return F.mse_loss(image, target) + graph_loss(features, logits, points, flags)


def fit_arm(cfg: FontGraphConfig, arm: str, train: FontGlyphs, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    ell = len(cfg.letters)
    model = (FontGraphModel(cfg.image_size, ell, cfg.style_dim, cfg.n_points) if arm == "graph"
             else Img2ImgModel(cfg.image_size, ell, cfg.style_dim)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, 30, gamma=0.9)
    stages = (["graph"] * cfg.graph_epochs + ["render"] * cfg.render_epochs + ["cycle"] * cfg.cycle_epochs
              if arm == "graph" else ["img2img"] * cfg.epochs)
    model.train()
    for epoch, stage in enumerate(stages):
        for batch in batches(train, cfg.batch_size, epoch, seed, device):
            loss = stage_loss(model, stage, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def evaluate(cfg: FontGraphConfig, model: torch.nn.Module | None, train: FontGlyphs, test: FontGlyphs,
             device: torch.device) -> dict[str, list[float]]:
    """Per held-out glyph (style-major, letter-minor): mse, psnr, ssim (and contours_ok for the graph
    model). ``model`` None: the per-character mean training glyph (style-agnostic floor)."""
    chars = torch.arange(len(cfg.letters), device=device)
    ref = cfg.letters.index(cfg.reference_char)
    made, ok = [], []
    for s in range(len(test.styles)):
        if model is None:
            made.append(train.images.mean(0))
            continue
        out = complete_font(model, test.images[s, ref][None].to(device), chars)
        made.append(out["images"].cpu())
        if "flag_logits" in out:
            ok += (contour_count(out["flag_logits"]).cpu() == test.contours[s]).float().tolist()
    generated, truth = torch.cat(made).clamp(0, 1), test.images.flatten(0, 1)
    metrics = {"mse": mse_per_image(generated, truth), "psnr": psnr_per_image(generated, truth),
               "ssim": ssim_per_image(generated, truth)}
    return metrics | ({"contours_ok": ok} if ok else {})


@register_experiment
class FontGraphExperiment(Experiment):
    id = "29-font-graph"
    title = "Font completion through an intermediate graph (image -> graph -> image cycle)"
    family = "generative"
    paper = ("Font Completion and Manipulation by Cycling Between Multi-Modality Representations "
             "(arXiv:2108.12965)")
    summary = ("Glyphs A-Z of matplotlib's fonts x 3 affine styles as rasters and 64-point outline graphs; every "
               "style of 4 fonts is held out. The graph model (encoder -> graph constructor -> graph encoder -> "
               "decoder, character-conditional BN on the target character) is trained in three stages "
               "(img->graph, graph->img, cycle); the img2img baseline has the same encoder and decoder and the "
               "same total epochs. Each held-out style is completed from one reference glyph: MSE, PSNR, SSIM "
               "over the 26 glyphs and the contour count of the predicted graphs.")
    Config = FontGraphConfig
    method = ("graph",)
    baselines = ("img2img", "mean_glyph")
    components = ("honed.generative.font_graph:FontGraphModel", "honed.generative.font_graph:Img2ImgModel",
                  "honed.generative.font_graph:graph_loss", "honed.generative.font_graph:complete_font",
                  "honed.generative.font_graph:move_points", "honed.generative.font_graph:interpolate_styles",
                  "honed.data.font_glyphs:make_font_glyphs")
    reconstructed = (
        "the 2 extra point features are the unit contour tangent (cos, sin) [card: our reading]",
        "contours in canonical form (counter-clockwise, start at the topmost-leftmost point, by decreasing "
        "area) so one style's graphs are comparable across fonts [ours]",
        "1D conv graph encoder (the card's conv variant; the graph-transformer variant is not built)",
        "fixed epochs per stage instead of early stopping (no validation styles are needed for it)",
    )

    def run_seed(self, cfg: FontGraphConfig, seed: int, ctx: Any) -> SeedOutput:
        train, test = load_glyphs(cfg)
        arms: dict[str, Any] = {"mean_glyph": ctx.cached("mean_glyph", lambda: evaluate(cfg, None, train, test,
                                                                                          ctx.device))}
        for arm in ("graph", "img2img"):
            arms[arm] = ctx.cached(arm, lambda a=arm: evaluate(cfg, fit_arm(cfg, a, train, seed, ctx.device), train,
                                                               test, ctx.device))
        return SeedOutput(arms=arms, extra={"test_styles": list(test.styles), "train_styles": len(train.styles)})

    def claims(self, cfg: FontGraphConfig, result: Any) -> list[Claim]:
        m = result.metric
        return [
            Claim.check("graph - img2img SSIM", m("graph", "ssim") - m("img2img", "ssim"), ">=", 0.01,
                        "card: graph model >= img2img on SSIM by +0.01 or more (held-out styles, one reference)",
                        metric="ssim"),
            Claim.check("graph - img2img MSE", m("graph", "mse") - m("img2img", "mse"), "<=", 0.0,
                        "card: graph model <= img2img on MSE", metric="mse"),
            Claim.check("predicted contour count correct", m("graph", "contours_ok"), ">=", 0.8,
                        "card: predicted graph flags reproduce the contour count for >= 80% of glyphs",
                        metric="contours_ok", requires=()),
        ]

    def preconditions(self, cfg: FontGraphConfig, result: Any) -> list[Precondition]:
        m = result.metric
        return [Precondition.check(
            f"{arm} beats the mean glyph (SSIM)", m(arm, "ssim") - m("mean_glyph", "ssim"), ">", 0.0,
            "a completion that is no better than the style-agnostic mean glyph of its character uses no style "
            "from the reference: comparing two such models says nothing about style transfer") for arm in ("graph",
                                                                                                             "img2img")]

    def notes(self, cfg: FontGraphConfig, result: Any) -> list[str]:
        mean = result.mean
        rows = [f"{arm}: SSIM {mean(arm, 'ssim'):.4f}, MSE {mean(arm, 'mse'):.5f}, PSNR {mean(arm, 'psnr'):.2f} dB"
                for arm in ("graph", "img2img", "mean_glyph")]
        held_out = (result.extra.get("test_styles") or {}).get("values") or [[]]
        return rows + [f"held-out styles (the same for every seed): {', '.join(held_out[0])}",
                       f"completed from the single reference glyph {cfg.reference_char!r}; {cfg.epochs} epochs per "
                       f"arm (graph: {cfg.graph_epochs} img->graph + {cfg.render_epochs} graph->img + "
                       f"{cfg.cycle_epochs} cycle)."]
