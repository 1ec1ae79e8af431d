"""31-opq: one-shot pruning-quantisation with unified channel-wise codebooks (OPQ: Compressing Deep
Neural Networks with One-shot Pruning-Quantization, Hu et al., AAAI 2021, arXiv:2205.11141).

Card 31 at small scale: sklearn digits 8x8 (stratified 70/30 split), the card's CNN conv16-conv32-fc128-
fc10 (71.5k compressible weights in layers of 144 to 65,536), pre-trained with Adam. At each global
sparsity P and average bit budget B, from the same pre-trained weights, all with the same fine-tuning
budget (SGD momentum 0.9, cosine LR) and all Linear/Conv weights compressed the same way:

* ``opq``: OPQ allocation (Laplace + Lagrange pruning ratios, Lagrange bit-widths) + unified channel-wise
  codebook, frozen during fine-tuning (card arm a);
* ``uniform``: same sparsity P in every layer + layer-wise quantiser at B bits everywhere (card b);
* ``global``: one global magnitude threshold + layer-wise quantiser at B bits (card c);
* ``opq_channelwise``: OPQ allocation + classic per-channel steps (card d);
* ``iterative``: cubic gradual magnitude pruning, then fixed uniform layer-wise B-bit quantisation
  with QAT (the card's iterative baseline (e), in-house), at the claim point only, with its own longer
  budget ``iterative_epochs`` (card: OPQ should reach its accuracy in at most 1/3 of its time).

Every compressed model is written with :mod:`honed.compress.packed_format` into the seed folder; its
size on disk (os.path.getsize) against the dense fp32 safetensors file gives the compression rate, and
the test accuracy is measured on the model decoded back from that file. Params, MACs (dense and
effective) and CPU latency of the decoded model are reported as separate columns: the packed model is
decoded to dense tensors, so it is not faster.
"""
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smax
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.experiment_parts.opq_arms import (ARMS, ONE_SHOT_ARMS, arm_key, dense_reference, load_data, pretrain,
                                             run_arm)

CARD_MARGINS = {0.95: 0.01, 0.8: 0.003}  # card: OPQ >= uniform and global by 1 pt at P=0.95, 0.3 pt at P=0.8 (3-bit)
CARD_BITS = 3.0
CHANNELWISE_TOLERANCE = 0.005  # card: OPQ within 0.5 pt of the classic per-channel quantiser
CHANCE_MARGIN = 0.3  # 10 classes: an arm counts as trained above 0.4 test accuracy


@dataclass(frozen=True)
class OPQConfig(ExperimentConfig):
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 128
    train_samples: int = 0  # 0 = the whole 70% training split
    batch_size: int = 64
    pretrain_epochs: int = 30  # Adam (card)
    pretrain_lr: float = 1e-3
    finetune_epochs: int = 5  # same budget for every arm (card)
    finetune_lr: float = 0.01  # SGD momentum 0.9, cosine (card step 6)
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    avg_bits: tuple[float, ...] = (3.0,)
    claim_sparsity: float = 0.9
    claim_bits: float = 3.0
    prune_err: Literal["relative", "absolute"] = "relative"  # (R) card step 3 objective of arm opq
    grid: Literal["midtread", "midrise"] = "midtread"  # (R) card step 5 codebook grid
    min_bits: int = 2
    max_bits: int = 8
    iterative_epochs: int = 15  # the iterative baseline's budget: 3x finetune_epochs (card: OPQ in <= 1/3 the time)
    iterative_prune_fraction: float = 0.6  # of the iterative baseline's epochs spent pruning
    iterative_scope: Literal["global", "layerwise"] = "global"
    latency_repeats: int = 30
    threads: int = 1  # tiny CNN: one torch thread is fastest (see ExperimentConfig)
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def smoke(cls) -> "OPQConfig":
        return replace(cls(), train_samples=300, pretrain_epochs=10, finetune_epochs=1, iterative_epochs=3,
                       sparsities=(0.9,), latency_repeats=5, seeds=(0,))

    @classmethod
    def full(cls) -> "OPQConfig":
        return replace(cls(), avg_bits=(3.0, 4.0), finetune_epochs=10, iterative_epochs=30, seeds=(0, 1, 2, 3, 4))

    def validate(self) -> None:
        if min(self.pretrain_epochs, self.finetune_epochs, self.iterative_epochs, self.batch_size,
               self.latency_repeats) < 1:
            raise ConfigError("epochs, batch_size and latency_repeats must be >= 1")
        if self.pretrain_lr <= 0 or self.finetune_lr <= 0 or self.train_samples < 0:
            raise ConfigError("learning rates must be > 0, train_samples >= 0")
        if not all(0 <= s < 1 for s in self.sparsities) or self.claim_sparsity not in self.sparsities:
            raise ConfigError(f"sparsities must lie in [0, 1) and include claim_sparsity {self.claim_sparsity}")
        if not 1 <= self.min_bits <= self.max_bits <= 8 or (self.grid == "midtread" and self.min_bits < 2):
            raise ConfigError("need 1 <= min_bits <= max_bits <= 8 (min_bits >= 2 for the midtread grid)")
        if not all(b == int(b) and self.min_bits <= b <= self.max_bits for b in self.avg_bits):
            raise ConfigError(f"avg_bits must be whole numbers in [min_bits, max_bits] (the uniform "
                              f"baselines use them as fixed bits), got {self.avg_bits}")
        if self.claim_bits not in self.avg_bits or not 0 < self.iterative_prune_fraction <= 1:
            raise ConfigError("avg_bits must include claim_bits; iterative_prune_fraction in (0, 1]")


def arms_at(cfg: OPQConfig, sparsity: float, bits: float) -> tuple[str, ...]:
    """The arms run at (sparsity, bits): every one-shot arm; the iterative baseline at the claim point only."""
    claim_point = sparsity == cfg.claim_sparsity and bits == cfg.claim_bits
    return ARMS if claim_point else tuple(ONE_SHOT_ARMS)


@register_experiment
class OPQExperiment(Experiment):
    id = "31-opq"
    title = "OPQ: one-shot pruning-quantisation with unified channel-wise codebooks"
    family = "compress"
    paper = "OPQ: Compressing Deep Neural Networks with One-shot Pruning-Quantization (arXiv:2205.11141)"
    summary = ("A digits CNN is pruned and quantised once from its pre-trained weights (Laplace/Lagrange "
               "per-layer ratios and bit-widths, one shared codebook per layer shifted by channel means), "
               "fine-tuned with masks and codebooks frozen, and written as a packed file (relative index + "
               "bit-packed codes + codebooks); compression is measured in bytes on disk against the dense "
               "fp32 file, beside uniform, global-magnitude, per-channel and iterative baselines.")
    Config = OPQConfig
    method = tuple(arm_key(a, s, 3.0) for a in ("opq",) for s in (0.8, 0.9, 0.95))
    baselines = ("dense", *(arm_key(a, s, 3.0) for a in ARMS[1:] for s in (0.8, 0.9, 0.95)))
    components = ("honed.compress.opq:opq_plan", "honed.compress.opq:attach_quantizers",
                  "honed.compress.opq:export_compressed", "honed.compress.opq:bake",
                  "honed.compress.packed_format:write_packed")
    reconstructed = (
        "pruning allocation (card step 3): prune_err='relative', min sum_i D_i/(2 b_i^2) with Laplace "
        "scales => p_i = 1 - exp(-sqrt(2 lambda N_i)), lambda by bisection; masks at the empirical per-layer "
        "|w - median| quantile, counts rounded by largest remainder",
        "bit allocation (card step 4): Delta_i^2 = 6 lambda' n_i / ln 2, k_i = ceil(log2(2 c_i / Delta_i + 1)) "
        "clipped to [min_bits, max_bits], smallest lambda' meeting the average budget; then (ours) leftover "
        "budget spent greedily one bit at a time; the final step is the smallest covering c_i with k_i bits",
        "unified channel-wise codebook (card step 5): per-channel mean of the kept weights + one step per "
        "layer (the paper may normalise scale instead)",
        "grid='midtread' (card step 5: levels q Delta, |q| <= 2^(k-1) - 1); the card's fixed-bits step "
        "2c/(2^k - 1) is a midrise grid, available as grid='midrise'",
        "iterative baseline: cubic gradual magnitude pruning (global ranking) then fixed uniform layer-wise "
        "quantisation with QAT, at the claim point only, for iterative_epochs (3x the one-shot arms' fine-tuning: "
        "the card's time comparison)",
    )
    claims_tested = ("compression rate in bytes on disk >= 10x at the claim point",
                     "accuracy loss vs the dense model <= 1 point at the same point",
                     "OPQ >= uniform and global pruning-quantisation by 1 pt at P=0.95 and 0.3 pt at P=0.8 (3 bits)",
                     "OPQ within 0.5 pt of the per-channel quantiser at every P",
                     "OPQ reaches the iterative baseline's accuracy in at most 1/3 of its CPU time")

    def run_seed(self, cfg: OPQConfig, seed: int, ctx) -> SeedOutput:
        data = load_data(cfg, seed)
        dense = pretrain(cfg, data[0], seed, ctx)
        dense.eval()
        ref = ctx.cached("dense", lambda: dense_reference(dense, data[1], cfg, ctx))
        arms: dict[str, dict[str, float]] = {"dense": ref}
        extra: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
        for sparsity in cfg.sparsities:
            for bits in cfg.avg_bits:
                for arm in arms_at(cfg, sparsity, bits):
                    key = arm_key(arm, sparsity, bits)
                    out = ctx.cached(key, lambda: run_arm(dense, arm, sparsity, bits, data, cfg, seed, ctx, ref))
                    layers = out.pop("layers", None)
                    if layers is not None and arm == "opq":
                        extra[f"layers_{key}"] = layers
                    arms[key] = out
        return SeedOutput(arms=arms, extra=extra)

    def claims(self, cfg: OPQConfig, result) -> list[Claim]:
        m = result.metric
        key = arm_key("opq", cfg.claim_sparsity, cfg.claim_bits)
        need = lambda *arms: tuple(f"{a} above chance" for a in arms)  # noqa: E731
        claims = [
            Claim.check("opq_compression_rate_on_disk", m(key, "compression_rate"), ">=", 10.0,
                        metric=f"{key}.compression_rate", requires=(),
                        paper="issue target >= 10x, bytes on disk (t interval over seeds; paper, ImageNet: AlexNet "
                              "138.96x, VGG-16 195.87x, MobileNet-V1 23.26x, ResNet-50 38.03x)"),
            Claim.check("opq_accuracy_loss", m("dense", "test_acc") - m(key, "test_acc"), "<=", 0.01,
                        metric=f"{key}.test_acc", requires=need("dense"),
                        paper="issue target <= 1 point vs the pre-trained model (paper: AlexNet +0.46 top-1, "
                              "ResNet-50 +0.40 top-1 vs the uncompressed model)"),
        ]
        for p, margin in CARD_MARGINS.items():
            if p in cfg.sparsities and CARD_BITS in cfg.avg_bits:
                opq, base = (arm_key(a, p, CARD_BITS) for a in ("opq", "uniform"))
                best = smax(m(base, "test_acc"), m(arm_key("global", p, CARD_BITS), "test_acc"))
                claims.append(Claim.check(
                    f"opq_minus_best_of_uniform_global_p{round(100 * p)}", m(opq, "test_acc") - best, ">=", margin,
                    f"card: OPQ >= uniform and global pruning-quantisation by {100 * margin:g} pt at P={p:g}, "
                    f"{CARD_BITS:g} bits, same fine-tuning budget", metric="test_acc", requires=need(opq)))
        for p in cfg.sparsities:
            opq, per_channel = (arm_key(a, p, cfg.claim_bits) for a in ("opq", "opq_channelwise"))
            claims.append(Claim.check(
                f"opq_vs_channelwise_abs_gap_p{round(100 * p)}", abs(m(opq, "test_acc") - m(per_channel, "test_acc")),
                "<=", CHANNELWISE_TOLERANCE, f"card: OPQ within {100 * CHANNELWISE_TOLERANCE:g} pt of the per-channel "
                f"quantiser at P={p:g} (fewer stored floats: an invariant)", metric="test_acc",
                requires=need(opq, per_channel)))
        iterative = arm_key("iterative", cfg.claim_sparsity, cfg.claim_bits)
        claims += [
            Claim.check("opq_minus_iterative_accuracy", m(key, "test_acc") - m(iterative, "test_acc"), ">=", 0.0,
                        f"card: OPQ ({cfg.finetune_epochs} epochs) reaches the iterative baseline's accuracy "
                        f"({cfg.iterative_epochs} epochs)", metric="test_acc", requires=need(iterative)),
            Claim.check("opq_over_iterative_cpu_time", m(key, "finetune_cpu_s") / m(iterative, "finetune_cpu_s"),
                        "<=", 1 / 3, "card: ... in at most 1/3 of its time (measured process CPU seconds of planning "
                        "+ fine-tuning, t interval over seeds; paper: > 3x less than ANNC)", metric="finetune_cpu_s",
                        requires=()),
        ]
        return claims

    def preconditions(self, cfg: OPQConfig, result) -> list[Precondition]:
        arms = ["dense", *(k for s in cfg.sparsities for k in (arm_key("opq", s, cfg.claim_bits),
                                                                arm_key("opq_channelwise", s, cfg.claim_bits))),
                arm_key("iterative", cfg.claim_sparsity, cfg.claim_bits)]
        return arms_above_chance(result, arms, "test_acc", 0.1, CHANCE_MARGIN)

    def invariants(self, cfg: OPQConfig, result) -> list[Invariant]:
        mean = result.mean
        key = arm_key("opq", cfg.claim_sparsity, cfg.claim_bits)
        out = [Invariant.check("fine-tuning epochs opq / iterative", cfg.finetune_epochs / cfg.iterative_epochs, "<=",
                               1 / 3, "the card's time budget: a ratio of two config constants"),
               Invariant.check(f"{key}: codebook floats opq - per-channel",
                               mean(key, "codebook_floats") - mean(arm_key("opq_channelwise", cfg.claim_sparsity,
                                                                            cfg.claim_bits), "codebook_floats"),
                               "<=", 0, "one step per layer + one mean per channel vs one step per channel: fixed by "
                               "the layer shapes (equal counts here: the card's 'fewer floats' does not hold for "
                               "this reconstruction, whose unified codebook stores the channel means)")]
        for arm in (a for a in result.arms if a != "dense"):
            out.append(Invariant.check(f"{arm}: decoded file == fine-tuned model", mean(arm, "roundtrip_exact"), ">=",
                                       1.0, "the packed format is lossless for the quantised weights"))
        return out

    def notes(self, cfg: OPQConfig, result) -> list[str]:
        def mean(arm: str, metric: str) -> float:
            return result.arms.get(arm, {}).get(metric, {}).get("mean", math.nan)

        dense_acc = mean("dense", "test_acc")
        out = [f"labelled 'OPQ (reconstructed allocation)': the allocation equations are the card's "
               f"reconstruction, not checked against the paper's Sec. 3.2-3.3; torch threads "
               f"{cfg.threads or 'default'} during each seed; dense test accuracy {dense_acc:.4f}"]
        for s in cfg.sparsities:
            for b in cfg.avg_bits:
                parts = [f"{a} {mean(arm_key(a, s, b), 'test_acc'):.4f} ({mean(arm_key(a, s, b), 'compression_rate'):.1f}x)"
                         for a in arms_at(cfg, s, b)]
                out.append(f"P={s:g}, B={b:g}: test acc (rate on disk) " + ", ".join(parts))
        key = arm_key("opq", cfg.claim_sparsity, cfg.claim_bits)
        out.append(f"latency of the decoded {key} vs dense: batch 1 {mean(key, 'latency_b1_ms'):.3f} vs "
                   f"{mean('dense', 'latency_b1_ms'):.3f} ms, batch 64 {mean(key, 'latency_b64_ms'):.3f} vs "
                   f"{mean('dense', 'latency_b64_ms'):.3f} ms: the packed file is decoded to dense tensors "
                   f"(decode {mean(key, 'decode_ms'):.1f} ms), so it is smaller on disk, not faster; "
                   f"effective MACs {mean(key, 'macs_effective'):.0f} of {mean(key, 'macs_dense'):.0f} would "
                   f"need sparse kernels")
        ch = arm_key("opq_channelwise", cfg.claim_sparsity, cfg.claim_bits)
        one_shot = ", ".join(f"{a} {mean(arm_key(a, cfg.claim_sparsity, cfg.claim_bits), 'test_acc_one_shot'):.4f}"
                             for a in ONE_SHOT_ARMS)
        out.append(f"accuracy right after the one-shot compression (before fine-tuning) at the claim point: "
                   f"{one_shot}; codebook floats stored: opq {mean(key, 'codebook_floats'):.0f}, "
                   f"opq_channelwise {mean(ch, 'codebook_floats'):.0f}")
        it = arm_key("iterative", cfg.claim_sparsity, cfg.claim_bits)
        out.append(f"planning + fine-tuning time at the claim point: opq {mean(key, 'finetune_cpu_s'):.2f} CPU s "
                   f"({mean(key, 'finetune_s'):.2f} s wall, {cfg.finetune_epochs} epochs), iterative "
                   f"{mean(it, 'finetune_cpu_s'):.2f} CPU s ({mean(it, 'finetune_s'):.2f} s wall, "
                   f"{cfg.iterative_epochs} epochs); the dense reference is the pre-trained model "
                   f"({cfg.pretrain_epochs} Adam epochs), as in the paper's comparisons")
        return out

    def plot(self, result, fig) -> bool:
        cfg = result.config
        axes = fig.subplots(1, len(cfg["avg_bits"]), squeeze=False)[0]
        dense = result.mean("dense", "test_acc")
        for ax, b in zip(axes, cfg["avg_bits"]):
            low = []
            for arm in ARMS:
                keys = [arm_key(arm, s, b) for s in cfg["sparsities"] if arm_key(arm, s, b) in result.arms]
                xs, ys = [result.mean(k, "compression_rate") for k in keys], [result.mean(k, "test_acc") for k in keys]
                ax.plot(xs, ys, "o-" if arm == "opq" else "o--", label=arm)
                low += [f"{k} {y:.3f}" for k, y in zip(keys, ys) if y < dense - 0.05]
            ax.axhline(dense - 0.01, color="grey", lw=0.8, label="dense - 1 pt")
            ax.set_ylim(dense - 0.05, min(1.0, dense + 0.01) + 0.002)
            if low:
                ax.text(0.01, 0.02, "below the axis: " + ", ".join(low), transform=ax.transAxes, fontsize=7)
            ax.set_xlabel("compression rate (bytes on disk)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"average bits {b:g}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return True
