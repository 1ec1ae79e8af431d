"""02-stream-filter: multistage streaming data filtering vs full training, random backward skipping and
threshold-only filtering on BBC News (Efficient NLP Model Finetuning via Multistage Data Filtering,
arXiv:2207.14386).

Per seed: a stratified subset of BBC News training articles, each with ``duplicates`` near-duplicate
copies (10% of words dropped) so that filtering has redundancy to remove; all-MiniLM-L6-v2 is frozen
(the card's "compatible with layer freezing", taken to all 6 layers because fine-tuning the encoder does
not fit 3 min on 2 shared CPU cores), its mean-pooled embeddings are computed once, and a 2-layer head
is fine-tuned on the stream (batch 8, AdamW, 2 epochs). phi = word-piece presence over the vocabulary.
"""
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, SeedOutput, register_experiment
from honed.efficient.stream_filter import StreamFilter

ARMS = ("full", "random_skip", "threshold_only", "three_stage")


@dataclass(frozen=True)
class StreamFilterConfig(ExperimentConfig):
    """Defaults are the ``small`` preset (one seed: encoding the corpus dominates the budget)."""

    seeds: tuple[int, ...] = (0,)
    threads: int = 1  # the streamed model is a small head: one torch thread avoids oversubscription
    tiny_encoder: bool = False  # random 2-layer encoder: smoke preset only, not pretrained
    base_train_docs: int = 100
    duplicates: int = 2
    test_docs: int = 100
    max_seq_len: int = 64
    drop_words: float = 0.1
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    hidden: int = 128
    warmup_percent: float = 20.0   # s0: % of one epoch's steps in stage 0
    predictor_loss_threshold: float = 0.35  # c (CLI arg in the reference; fixed before any run)
    predictor_window: int = 8       # w (reference AG script default)
    threshold_window: int = 128     # W = 16 x batch
    split_seed: int = 0

    @classmethod
    def smoke(cls) -> "StreamFilterConfig":
        return replace(cls(), tiny_encoder=True, base_train_docs=24, duplicates=2, test_docs=20,
                       max_seq_len=32, epochs=1)

    def validate(self) -> None:
        for name in ("base_train_docs", "test_docs", "epochs", "batch_size", "predictor_window",
                     "threshold_window", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.warmup_percent < 100 or not 0 <= self.drop_words < 1:
            raise ConfigError("warmup_percent must lie in (0, 100) and drop_words in [0, 1)")


def near_duplicate(text: str, drop: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= drop]
    return " ".join(kept or words)


def build_stream(cfg: StreamFilterConfig, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    from honed.data.text import load_text_corpus

    total = int(1.05 * max(cfg.base_train_docs / 0.7, cfg.test_docs / 0.2)) + 10  # 70/10/20 split
    data = load_text_corpus("bbcnews", cfg.split_seed, max_docs=total)
    rng = random.Random(seed)
    base = data.train[:cfg.base_train_docs]
    stream = list(base) + [(near_duplicate(t, cfg.drop_words, rng), y) for t, y in base
                           for _ in range(cfg.duplicates)]
    return stream, data.test[:cfg.test_docs], data.num_classes


@torch.no_grad()
def encode(cfg: StreamFilterConfig, texts: list[str], device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """Frozen mean-pooled encoder embeddings (N, H) and word-piece presence features (N, vocab)."""
    from honed.models.text_encoder import load_minilm, tokenize

    tokenizer, encoder = load_minilm(device, tiny_encoder_config=cfg.tiny_encoder)
    encoder.eval()
    embeddings, ids = [], []
    for start in range(0, len(texts), 32):
        batch = tokenize(tokenizer, texts[start:start + 32], cfg.max_seq_len)
        hidden = encoder(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state
        mask = batch["attention_mask"].to(device).unsqueeze(-1).float()
        embeddings.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
        ids += [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
    phi = np.zeros((len(texts), tokenizer.vocab_size), dtype=np.uint8)
    for i, row in enumerate(ids):
        phi[i, row] = 1
    return torch.cat(embeddings), phi


def per_example_ce(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(inputs), targets, reduction="none")


def make_head(cfg: StreamFilterConfig, dim: int, classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, classes))


def train_arm(cfg: StreamFilterConfig, arm: str, data: dict[str, Any], seed: int, keep_prob: float = 1.0) -> dict[str, float]:
    """Stream ``epochs`` passes over the training examples through one arm; return its metrics."""
    x, y, phi = data["x"], data["y"], data["phi"]
    model = make_head(cfg, x.shape[1], data["classes"], seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    warmup = max(1, round(cfg.warmup_percent / 100 * steps_per_epoch))
    big = 10 ** 9  # "full" / "random_skip" never leave stage 0: ordinary training on what they get
    filt = StreamFilter(model, optimizer, per_example_ce, cfg.batch_size,
                        warmup if arm in ("threshold_only", "three_stage") else big,
                        cfg.predictor_loss_threshold, cfg.predictor_window, cfg.threshold_window,
                        max_stage=1 if arm == "threshold_only" else 2)
    order_rng, keep_rng = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=order_rng)
        if arm == "random_skip":  # same expected backward budget, chosen without looking at losses
            order = order[torch.rand(len(order), generator=keep_rng) < keep_prob]
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            filt.step(x[idx], y[idx], phi[idx.numpy()])
        if arm in ("threshold_only", "three_stage"):
            filt.end_epoch()
    wall = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = (model(data["test_x"]).argmax(1) == data["test_y"]).float().mean().item()
    c = filt.counters()
    seen = cfg.epochs * len(y)  # examples offered to the arm (random_skip drops some unseen)
    return {"test_acc": acc, "forward_examples": c["forward_examples"], "backward_examples": c["backward_examples"],
            "forward_skipped_share": c["forward_skipped"] / seen, "backward_skip_ratio": 1 - c["backward_examples"] / seen,
            "wall_s": wall, "reached_stage": c["stage"], "tau": c["tau"]}


@register_experiment
class StreamFilterExperiment(Experiment):
    id = "02-stream-filter"
    title = "Multistage streaming data filtering: loss threshold skips backward, meta predictor skips forward"
    family = "efficient"
    paper = "Efficient NLP Model Finetuning via Multistage Data Filtering (arXiv:2207.14386)"
    summary = ("BBC News subset with near-duplicates streamed for 2 epochs (batch 8) through a head on frozen "
               "all-MiniLM-L6-v2 embeddings. Stage 0 trains normally and fixes tau = mean of the last 128 losses; "
               "stage 1 back-propagates only examples with loss >= tau (staging buffer) while a Bernoulli naive "
               "Bayes predictor learns 1[loss > tau] from word-piece presence; stage 2 skips the forward of "
               "predicted-easy examples. Baselines: full training, random backward skipping at the same budget, "
               "threshold only (stages 0-1).")
    Config = StreamFilterConfig
    method = ("three_stage", "threshold_only")
    baselines = ("full", "random_skip")
    reconstructed = ("encoder frozen (all layers) and embeddings cached; head-only fine-tuning for the CPU budget",
                     "predictor-loss threshold c = 0.35 (a CLI argument in the reference; no default given)",
                     "random_skip keeps each example with probability budget/total (expected budget match)")
    claims_tested = (">= 3x fewer backward passes than full fine-tuning (issue; paper up to 5x)",
                     "accuracy loss <= 1 point vs full fine-tuning",
                     "better than random backward skipping at equal backward budget")

    def run_seed(self, cfg: StreamFilterConfig, seed: int, ctx: Any) -> SeedOutput:
        stream, test, classes = build_stream(cfg, seed)
        x, phi = encode(cfg, [t for t, _ in stream], ctx.device)
        test_x, _ = encode(cfg, [t for t, _ in test], ctx.device)
        data = {"x": x.cpu(), "y": torch.tensor([l for _, l in stream]), "phi": phi, "classes": classes,
                "test_x": test_x.cpu(), "test_y": torch.tensor([l for _, l in test])}
        arms = {arm: train_arm(cfg, arm, data, seed) for arm in ("full", "threshold_only", "three_stage")}
        budget = arms["three_stage"]["backward_examples"] / arms["full"]["backward_examples"]
        arms["random_skip"] = train_arm(cfg, "random_skip", data, seed, keep_prob=budget)
        extra = {"stream_examples": len(stream), "class_names": [f"class{i}" for i in range(classes)], "duplicate_ratio": cfg.duplicates / (1 + cfg.duplicates),
                 "encoder": "tiny random BERT (smoke only)" if cfg.tiny_encoder else "all-MiniLM-L6-v2 (frozen)"}
        return SeedOutput(arms={a: {k: float(v) for k, v in m.items()} for a, m in arms.items()}, extra=extra)

    def claims(self, cfg: StreamFilterConfig, result: Any) -> list[Claim]:
        full_bwd, ours_bwd = result.mean("full", "backward_examples"), result.mean("three_stage", "backward_examples")
        return [
            Claim.check("backward_reduction_x", full_bwd / max(ours_bwd, 1.0), ">=", 3.0,
                        "issue: >= 3x fewer backward passes (paper: up to 5x fewer examples)"),
            Claim.check("acc_loss_vs_full", result.mean("full", "test_acc") - result.mean("three_stage", "test_acc"),
                        "<=", 0.01, "minor accuracy loss (issue: <= 1 point)"),
            Claim.check("acc_gain_vs_random_skip", result.mean("three_stage", "test_acc")
                        - result.mean("random_skip", "test_acc"), ">=", 0.0,
                        "card: better than random backward skipping at equal backward count"),
        ]

    def notes(self, cfg: StreamFilterConfig, result: Any) -> list[str]:
        extra = {k: v.get("mean", v.get("values")) for k, v in result.extra.items()}
        notes = [f"encoder: {extra.get('encoder')}; stream of {extra.get('stream_examples')} "
                 f"examples per epoch, duplicate ratio {extra.get('duplicate_ratio')}"]
        chance_loss = float(np.log(len(result.extra.get("class_names", {}).get("values", [[0] * 5])[0])))
        tau = result.mean("three_stage", "tau")
        if tau > 0.8 * chance_loss:
            notes.append(f"tau = {tau:.3f} was frozen after stage 0 while the randomly initialised head was "
                         f"still near chance loss ln(C) = {chance_loss:.3f} (full training ends with a "
                         f"window-mean loss of {result.mean('full', 'tau'):.3f}): stage 1 then back-propagates "
                         "only the hardest examples, which costs accuracy; the card's warm start of the "
                         "model (one pass on held-out data) or a longer stage 0 would be the next step")
        if result.mean("three_stage", "reached_stage") < 2:
            notes.append("three_stage never reached stage 2 within the run: no forwards were skipped")
        notes.append(f"three_stage skipped {result.mean('three_stage', 'forward_skipped_share'):.0%} of examples' forwards and "
                     f"{result.mean('three_stage', 'backward_skip_ratio'):.0%} of backwards")
        return notes
