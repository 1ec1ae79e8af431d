"""10-lstm-cgan: LSTM conditional GAN vs GAN-INT-CLS on captioned synthetic shapes (Ouyang et al.,
"Generating Image Sequence from Description with LSTM Conditional GAN", arXiv:1806.03027).

Data: 16x16 images of one shape (shape, colour, size, position) with captions from several templates;
20% of the attribute combinations are held out, and every test caption asks for one of them. Per seed,
the LSTM cGAN (image after every word, mask head trained by the D optimiser) and GAN-INT-CLS (noise +
sentence vector, no LSTM, no mask) train with the same D architecture, matching-aware loss, optimiser,
batches and 1 D : 2 G schedule. An attribute classifier trained on a separate set of real images of every
attribute combination (the generators never see it) scores the generated test images (mean of 4
attribute hits per image); SSIM and MSE compare each generated image
with the real image of its caption. The LSTM cGAN's per-step images give a per-step accuracy curve and,
per test caption, the jump of each attribute's accuracy at the step where its word appears.
"""
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.progress import progress_bar
from honed.data.shape_captions import (ATTRIBUTE_NAMES, ATTRIBUTES, CaptionedShapes, encode_captions,
                                       make_captioned_shapes, split_combinations, word_vectors)
from honed.generative.image_metrics import mse_per_image, ssim_per_image
from honed.generative.lstm_cgan import (GANINTCLSGenerator, GANINTCLSTrainer, LSTMCGANTrainer,
                                        LSTMConditionalGenerator, MatchingDiscriminator, wrong_image_indices)

CHANCE = sum(1 / len(v) for v in ATTRIBUTES.values()) / len(ATTRIBUTES)  # mean attribute hit of a guess


@dataclass(frozen=True)
class LSTMCGANConfig(ExperimentConfig):
    """Defaults are the ``small`` preset (one seed; intervals are paired bootstraps over the test captions).
    ``steps_per_caption`` renders that many random real-word steps per caption and iteration (an unbiased
    subsample of the card's mean over all steps, to fit the CPU budget); ``full`` uses every step (None),
    32x32 images, 3 seeds and the card's 3000 iterations: expected about 10x the small preset's time."""

    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    image_size: int = 16
    n_train: int = 3000
    n_test: int = 500
    held_out: float = 0.2
    data_seed: int = 0
    word_dim: int = 32
    hidden: int = 64
    g_channels: tuple[int, ...] = (32, 16)
    d_channels: tuple[int, ...] = (16, 32)
    noise_dim: int = 16
    iterations: int = 1500
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    g_steps: int = 2
    steps_per_caption: int | None = 4
    no_mask_arm: bool = False  # the card's optional ablation: LSTM cGAN with x shown to D unmasked
    judge_train: int = 3000  # real images of ALL combinations for the attribute classifier (never the generators')
    judge_val: int = 500  # fresh real held-out-combination images: the classifier's validation accuracy
    classifier_epochs: int = 15

    @classmethod
    def smoke(cls) -> "LSTMCGANConfig":
        return replace(cls(), image_size=8, g_channels=(16,), d_channels=(16,), n_train=200, n_test=60,
                       iterations=30, classifier_epochs=1, steps_per_caption=2, judge_train=200, judge_val=60)

    @classmethod
    def full(cls) -> "LSTMCGANConfig":
        return replace(cls(), seeds=(0, 1, 2), image_size=32, g_channels=(64, 32, 16), d_channels=(16, 32, 64),
                       iterations=3000, batch_size=64, steps_per_caption=None, no_mask_arm=True)

    def validate(self) -> None:
        for name in ("n_train", "n_test", "iterations", "batch_size", "g_steps", "classifier_epochs", "hidden",
                     "judge_train", "judge_val"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, chans in (("g_channels", self.g_channels), ("d_channels", self.d_channels)):
            if 4 * 2 ** len(chans) != self.image_size:
                raise ConfigError(f"{name} has {len(chans)} layers: it makes {4 * 2 ** len(chans)}px images, "
                                  f"not image_size={self.image_size}")
        if self.steps_per_caption is not None and self.steps_per_caption < 1:
            raise ConfigError("steps_per_caption must be None or >= 1")


class AttributeClassifier(nn.Module):
    """Evaluator: a small CNN with one head per attribute, trained on real images (the judge set)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Flatten(), nn.Linear(32 * (size // 2) ** 2, 64), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(64, len(v)) for v in ATTRIBUTES.values())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.body(x)
        return [head(z) for head in self.heads]


def train_classifier(cfg: LSTMCGANConfig, data: CaptionedShapes, seed: int,
                     device: torch.device) -> AttributeClassifier:
    torch.manual_seed(seed + 101)
    model = AttributeClassifier(cfg.image_size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data.images.to(device), data.attributes.to(device)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.classifier_epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = sum(F.cross_entropy(out, y[idx, a]) for a, out in enumerate(model(x[idx])))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def attribute_hits(classifier: AttributeClassifier, images: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """(N, 4) 0/1: whether the classifier reads each requested attribute in each image."""
    preds = torch.stack([out.argmax(1) for out in classifier(images)], 1)
    return (preds == attributes.to(preds.device)).float()


def make_data(cfg: LSTMCGANConfig) -> dict[str, Any]:
    train_combos, test_combos = split_combinations(cfg.held_out, cfg.data_seed)
    train = make_captioned_shapes(cfg.n_train, train_combos, cfg.data_seed + 1, cfg.image_size)
    test = make_captioned_shapes(cfg.n_test, test_combos, cfg.data_seed + 2, cfg.image_size)
    vectors = word_vectors(cfg.word_dim, cfg.data_seed)
    every = sorted(train_combos + test_combos)  # the judge reads every combination; the generators never see it
    return {"train": train, "test": test, "judge": make_captioned_shapes(cfg.judge_train, every, cfg.data_seed + 3,
                                                                         cfg.image_size),
            "judge_val": make_captioned_shapes(cfg.judge_val, test_combos, cfg.data_seed + 4, cfg.image_size),
            "train_text": encode_captions(train.captions, vectors),
            "test_text": encode_captions(test.captions, vectors)}


def fit_arm(cfg: LSTMCGANConfig, arm: str, data: dict, seed: int, device: torch.device) -> nn.Module:
    """Train one arm from the seed's shared D initialisation on the seed's shared batch order."""
    words, mask, sentence = (t.to(device) for t in data["train_text"])
    images, attrs = data["train"].images.to(device), data["train"].attributes.to(device)
    torch.manual_seed(seed)
    disc = MatchingDiscriminator(cfg.word_dim, cfg.d_channels).to(device)
    noise = torch.Generator(device=device).manual_seed(seed + 17)
    if arm == "gan_int_cls":
        gen: nn.Module = GANINTCLSGenerator(cfg.word_dim, cfg.noise_dim, channels=cfg.g_channels).to(device)
        trainer: Any = GANINTCLSTrainer(gen, disc, cfg.lr, cfg.beta1, cfg.g_steps, generator=noise)
    else:
        gen = LSTMConditionalGenerator(cfg.word_dim, cfg.hidden, cfg.g_channels).to(device)
        trainer = LSTMCGANTrainer(gen, disc, cfg.lr, cfg.beta1, cfg.g_steps, use_mask=arm == "lstm_cgan",
                                  steps_per_caption=cfg.steps_per_caption, generator=noise)
    order = torch.Generator().manual_seed(seed + 5)
    with progress_bar(cfg.iterations, f"10-lstm-cgan {arm}") as bar:
        for _ in range(cfg.iterations):
            idx = torch.randint(len(images), (cfg.batch_size,), generator=order).to(device)
            wrong = images[idx][wrong_image_indices(attrs[idx], noise)]
            if arm == "gan_int_cls":
                trainer.step(sentence[idx], images[idx], wrong)
            else:
                trainer.step(words[idx], mask[idx], sentence[idx], images[idx], wrong)
            bar.advance()
    return gen.eval()


@torch.no_grad()
def step_images(gen: LSTMConditionalGenerator, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(T + 1, N, 3, S, S): the image before any word (zero hidden state) and after every step."""
    images, _ = gen(words, mask)
    before, _ = gen.render(torch.zeros(len(words), gen.lstm.hidden_size, device=words.device), masks=False)
    return torch.cat([before[None], images.transpose(0, 1)])


def evaluate_arm(cfg: LSTMCGANConfig, arm: str, gen: nn.Module, data: dict, classifier: AttributeClassifier,
                 seed: int, device: torch.device) -> dict[str, Any]:
    test = data["test"]
    words, mask, sentence = (t.to(device) for t in data["test_text"])
    attrs = test.attributes.to(device)
    out: dict[str, Any] = {"curve": {}}
    if arm == "gan_int_cls":
        final = gen(sentence, torch.Generator(device=device).manual_seed(seed + 29))
    else:
        steps = step_images(gen, words, mask)
        last = mask.sum(1).long()
        final = steps[last, torch.arange(len(last), device=device)]
        hits = torch.stack([attribute_hits(classifier, s, attrs) for s in steps])  # (T + 1, N, 4)
        out["curve"] = {name: hits[:, :, a].mean(1).tolist() for a, name in enumerate(ATTRIBUTE_NAMES)}
        at = test.word_steps.to(device).T  # (4, N): step at which each attribute's word appears
        idx = torch.arange(len(last), device=device)
        jump = torch.stack([hits[at[a], idx, a] - hits[at[a] - 1, idx, a] for a in range(len(ATTRIBUTE_NAMES))], 1)
        out["word_jump"] = jump.mean(1).tolist()
    hits = attribute_hits(classifier, final, attrs)
    out["metrics"] = {"attr_acc": hits.mean(1).tolist(), "ssim": ssim_per_image(final, test.images),
                      "mse": mse_per_image(final, test.images),
                      **{f"acc_{name}": hits[:, a].tolist() for a, name in enumerate(ATTRIBUTE_NAMES)}}
    if "word_jump" in out:
        out["metrics"]["word_jump"] = out.pop("word_jump")
    return out


def arm_names(cfg: LSTMCGANConfig) -> tuple[str, ...]:
    return ("lstm_cgan", "gan_int_cls") + (("lstm_cgan_no_mask",) if cfg.no_mask_arm else ())


@register_experiment
class LSTMCGANExperiment(Experiment):
    id = "10-lstm-cgan"
    title = "LSTM conditional GAN: an image after every word of the caption, matching-aware D"
    family = "generative"
    paper = "Generating Image Sequence from Description with LSTM Conditional GAN (arXiv:1806.03027)"
    summary = ("Captioned 16x16 shape images (shape, colour, size, position; several caption templates; 20% of "
               "the attribute combinations held out for test). The LSTM cGAN renders an image after every word "
               "with a shared DCGAN generator and a mask head trained by the D optimiser; GAN-INT-CLS renders "
               "from noise + sentence vector. Same matching-aware D, loss form, Adam 2e-4 (beta1 0.5), batches "
               "and 1 D : 2 G steps. Scored by an attribute classifier trained on real images, SSIM and MSE to "
               "the real image of each held-out caption, and the per-step accuracy curve.")
    Config = LSTMCGANConfig
    method = ("lstm_cgan", "lstm_cgan_no_mask")
    baselines = ("gan_int_cls",)
    components = ("honed.generative.lstm_cgan:LSTMConditionalGenerator",
                  "honed.generative.lstm_cgan:MatchingDiscriminator",
                  "honed.generative.lstm_cgan:LSTMCGANTrainer",
                  "honed.generative.lstm_cgan:GANINTCLSGenerator",
                  "honed.generative.lstm_cgan:wrong_image_indices",
                  "honed.generative.image_metrics:ssim_per_image",
                  "honed.data.shape_captions:make_captioned_shapes")
    reconstructed = (
        "attribute classifier (the judge): trained on its own real images of every attribute combination, so "
        "it can read held-out combinations; the generators never see those images",
        "word vectors: fixed random 32-d Gaussian per word (stand-in for 400-d word2vec); sentence vector: mean "
        "of the caption's word vectors (stand-in for skip-thought), as the card's small-scale plan says",
        "wrong image: a batch image whose attribute combination differs from the caption's (the reference "
        "uses a second, differently ordered stream, which can repeat the matching description)",
        "GAN-INT-CLS baseline: the same loss form as the LSTM cGAN (real 1, wrong 0, fake 0, summed), "
        "not Reed et al.'s 0.5 weights on the two negatives",
    )

    def run_seed(self, cfg: LSTMCGANConfig, seed: int, ctx: Any) -> SeedOutput:
        data = make_data(cfg)
        classifier = train_classifier(cfg, data["judge"], seed, ctx.device)
        val_hits = attribute_hits(classifier, data["judge_val"].images.to(ctx.device), data["judge_val"].attributes)
        real_hits = attribute_hits(classifier, data["test"].images.to(ctx.device), data["test"].attributes)
        arms, curves = {}, {}
        for arm in arm_names(cfg):
            def compute(a=arm):
                gen = fit_arm(cfg, a, data, seed, ctx.device)
                return evaluate_arm(cfg, a, gen, data, classifier, seed, ctx.device)
            out = ctx.cached(arm, compute)
            arms[arm] = out["metrics"]
            for name, ys in out["curve"].items():
                curves.setdefault(f"{name} accuracy per step", {})[arm] = ys
        arms["real_images"] = {"attr_acc": real_hits.mean(1).tolist()}
        return SeedOutput(arms=arms, curves=curves, extra={"classifier_val_acc": float(val_hits.mean())})

    def claims(self, cfg: LSTMCGANConfig, result: Any) -> list[Claim]:
        m = result.metric
        gen_ok = ("classifier reads held-out real images", "lstm_cgan above chance", "gan_int_cls above chance")
        return [
            Claim.check("lstm_cgan - gan_int_cls attribute accuracy",
                        m("lstm_cgan", "attr_acc") - m("gan_int_cls", "attr_acc"), ">=", 0.0, "card: LSTM cGAN >= GAN-INT-CLS on attribute accuracy (held-out combinations)",
                        metric="attr_acc", requires=gen_ok),
            Claim.check("lstm_cgan - gan_int_cls SSIM", m("lstm_cgan", "ssim") - m("gan_int_cls", "ssim"), ">=", 0.0,
                        "card: LSTM cGAN >= GAN-INT-CLS on SSIM to the ground-truth image", metric="ssim",
                        requires=gen_ok[1:]),
            Claim.check("lstm_cgan - gan_int_cls MSE", m("lstm_cgan", "mse") - m("gan_int_cls", "mse"), "<=", 0.0,
                        "paper: better images than the conditional GAN baseline (MSE to ground truth, lower)",
                        metric="mse", requires=gen_ok[1:]),
            Claim.check("attribute accuracy jump at its word's step", m("lstm_cgan", "word_jump"), ">", 0.0,
                        "card: an attribute's accuracy jumps at the step where its word appears (after - before, "
                        "mean over the 4 attributes)", metric="word_jump", requires=gen_ok[:2]),
        ]

    def preconditions(self, cfg: LSTMCGANConfig, result: Any) -> list[Precondition]:
        return [Precondition.check(
            "classifier reads held-out real images", result.metric("real_images", "attr_acc"), ">", 0.9,
            "the attribute classifier is the judge: it must read the held-out combinations in real images")
        ] + arms_above_chance(result, ("lstm_cgan", "gan_int_cls"), "attr_acc", CHANCE, 0.1)

    def notes(self, cfg: LSTMCGANConfig, result: Any) -> list[str]:
        mean = result.mean
        lines = [f"attribute accuracy of generated held-out captions: " + ", ".join(
            f"{arm} {mean(arm, 'attr_acc'):.3f}" for arm in arm_names(cfg)) +
            f"; real test images {mean('real_images', 'attr_acc'):.3f}; chance {CHANCE:.3f}.",
            "classifier validation accuracy (fresh real held-out-combination images, not the test set): "
            f"{(result.extra.get('classifier_val_acc') or {}).get('mean', float('nan')):.3f}."]
        for name in ATTRIBUTE_NAMES:
            lines.append(f"{name} accuracy: " + ", ".join(f"{arm} {mean(arm, 'acc_' + name):.3f}"
                                                           for arm in arm_names(cfg)))
        if cfg.steps_per_caption is not None:
            lines.append(f"losses averaged over {cfg.steps_per_caption} random real-word steps per caption and "
                         "iteration (unbiased subsample of the card's all-step mean; full uses every step).")
        return lines

    def plot(self, result: Any, fig: Any) -> bool:
        ax = fig.subplots(1, 1)
        for curve, by_arm in result.curves.items():
            ys = by_arm.get("lstm_cgan")
            if ys:
                ax.plot(range(len(ys)), ys, marker="o", label=curve.replace(" accuracy per step", ""))
        ax.set(title="LSTM cGAN: attribute accuracy after each word (step 0: no word)", xlabel="step",
               ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return True
