"""The arms of 31-opq (OPQ: Compressing Deep Neural Networks with One-shot Pruning-Quantization,
arXiv:2205.11141), split out of :mod:`honed.experiments.e31_opq`: data and model, pre-training, the
one-shot arms and the iterative baseline with their fine-tuning, and the packed-file measurement
(bytes on disk, accuracy of the decoded model, cost columns).
"""
import os
import time
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from honed.compress.cost import cost_columns
from honed.compress.masks import magnitude_prune, prunable_weights
from honed.compress.opq import (attach_quantizers, bake, compression_rate_estimate, export_compressed,
                                opq_plan, plan_layers)
from honed.compress.packed_format import load_packed, write_packed
from honed.core.atomic import atomic_write
from honed.core.loop import Callback, correct_per_example, evaluate_classifier, train
from honed.data import Batches, Split, create_dataset
from honed.core.measure import Stopwatch
from honed.models import create_model

if TYPE_CHECKING:
    from honed.experiments.e31_opq import OPQConfig

ONE_SHOT_ARMS = {  # arm -> opq_plan keywords besides sparsity and bits
    "opq": dict(prune_err="relative", quantizer="unified", bits="avg"),
    "uniform": dict(prune_err="uniform", quantizer="layerwise", bits="fixed"),
    "global": dict(prune_err="total", quantizer="layerwise", bits="fixed"),
    "opq_channelwise": dict(prune_err="relative", quantizer="channelwise", bits="avg"),
}
ARMS = (*ONE_SHOT_ARMS, "iterative")


def arm_key(arm: str, sparsity: float, bits: float) -> str:
    return f"{arm}_p{round(100 * sparsity)}_b{bits:g}"


def build_model(cfg: "OPQConfig", device: torch.device) -> torch.nn.Module:
    return create_model("cnn", in_channels=1, num_classes=10, channels=tuple(cfg.channels),
                        hidden=cfg.hidden, pooled=4).to(device)


def load_data(cfg: "OPQConfig", seed: int) -> tuple[Split, Split]:
    data = create_dataset("digits", size=8, fractions=(0.7, 0.0, 0.3))
    train_split = data.train
    if cfg.train_samples:
        idx = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(seed))[:cfg.train_samples]
        train_split = Split(train_split.x[idx], train_split.y[idx])
    return train_split, data.test


class CosineLR(Callback):
    """Cosine learning-rate decay over all steps of a ``train`` call (stepped after each step)."""

    def on_train_start(self, state) -> None:
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(state.optimizer, max(state.total_steps, 1))

    def after_step(self, state) -> None:
        self.sched.step()


class GradualMagnitudePruning(Callback):
    """Iterative baseline (Zhu & Gupta, arXiv:1710.01878): sparsity P (1 - (1 - t/T)^3) at step t <= T,
    masks re-ranked by |w| every ``every`` steps (pruned stay pruned), grads and weights masked."""

    def __init__(self, sparsity: float, scope: str, every: int) -> None:
        self.sparsity, self.scope, self.every, self.mask = sparsity, scope, max(every, 1), None

    def on_train_start(self, state) -> None:
        self.mask = magnitude_prune(state.model, 0.0, self.scope)

    def before_step(self, state) -> None:
        params = dict(state.model.named_parameters())
        for name, keep in self.mask.items():
            if params[name].grad is not None:
                params[name].grad.mul_(keep)

    @torch.no_grad()
    def after_step(self, state) -> None:
        if state.step % self.every == 0 or state.step == state.total_steps:
            target = self.sparsity * (1 - (1 - min(state.step / max(state.total_steps, 1), 1.0)) ** 3)
            self.mask = magnitude_prune(state.model, target, self.scope, current=self.mask)
        params = dict(state.model.named_parameters())
        for name, keep in self.mask.items():
            params[name].mul_(keep)


def finetune(model: torch.nn.Module, train_split: Split, cfg: "OPQConfig", seed: int, epochs: int,
             callbacks: tuple = ()) -> None:
    """SGD momentum 0.9 + cosine LR for ``epochs``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.finetune_lr, momentum=0.9)
    if epochs > 0:
        train(model, Batches(train_split, cfg.batch_size, seed=seed + 17), optimizer, epochs,
              callbacks=[CosineLR(), *callbacks], device=next(model.parameters()).device, progress=False)


def iterative_arm(dense: torch.nn.Module, train_split: Split, cfg: "OPQConfig", seed: int,
                  sparsity: float, bits: int, clock: Stopwatch) -> torch.nn.Module:
    """Gradual magnitude pruning for ``iterative_prune_fraction`` of ``iterative_epochs``, then uniform
    B-bit layer-wise quantisation (steps fixed from the pruned weights) fine-tuned for the rest."""
    model = build_model(cfg, next(dense.parameters()).device)
    model.load_state_dict(dense.state_dict())
    prune_epochs = max(1, round(cfg.iterative_prune_fraction * cfg.iterative_epochs))
    every = max(1, len(Batches(train_split, cfg.batch_size)) // 4)
    pruner = GradualMagnitudePruning(sparsity, cfg.iterative_scope, every)
    with clock:
        finetune(model, train_split, cfg, seed, prune_epochs, (pruner,))
        weights = {k: p.detach() for k, p in prunable_weights(model).items()}
        plans = plan_layers(weights, {k: pruner.mask[k] for k in weights}, fixed_bits=bits, quantizer="layerwise",
                            grid=cfg.grid, min_bits=min(cfg.min_bits, bits), max_bits=cfg.max_bits)
        attach_quantizers(model, plans)
        finetune(model, train_split, cfg, seed + 1, cfg.iterative_epochs - prune_epochs)
    return model


def one_shot_arm(dense: torch.nn.Module, arm: str, train_split: Split, test: Split, cfg: "OPQConfig", seed: int,
                 sparsity: float, bits: float, clock: Stopwatch) -> tuple[torch.nn.Module, dict, float]:
    """Plan from the pre-trained weights once, attach the frozen quantisers, fine-tune (planning and
    fine-tuning timed by ``clock``). Returns (model, plans, accuracy before fine-tuning)."""
    spec = ONE_SHOT_ARMS[arm]
    model = build_model(cfg, next(dense.parameters()).device)
    model.load_state_dict(dense.state_dict())
    bit_kw = {"avg_bits": float(bits)} if spec["bits"] == "avg" else {"fixed_bits": int(bits)}
    prune_err = cfg.prune_err if spec["prune_err"] == "relative" else spec["prune_err"]
    with clock:
        plans = opq_plan(model, sparsity, prune_err=prune_err, quantizer=spec["quantizer"], grid=cfg.grid,
                         min_bits=cfg.min_bits, max_bits=cfg.max_bits, **bit_kw)
        attach_quantizers(model, plans)
    before = evaluate_classifier(model, test.x, test.y, device=next(model.parameters()).device)["accuracy"]
    with clock:
        finetune(model, train_split, cfg, seed, cfg.finetune_epochs)
    return model, plans, before


def measure_packed(model: torch.nn.Module, key: str, cfg: "OPQConfig", ctx, test: Split,
                   dense_bytes: int, dense_acc: float) -> dict[str, float]:
    """Write the packed file, decode it into a fresh model and measure everything on the decoded one."""
    layers, dense_tensors = export_compressed(model)
    path = ctx.dir / f"{key}.hpq"
    write_packed(path, layers, dense_tensors, meta={"arm": key})
    decoded = build_model(cfg, ctx.device)
    start = time.perf_counter()
    load_packed(decoded, path)
    decode_ms = 1e3 * (time.perf_counter() - start)
    baked = bake(model).state_dict()
    exact = all(torch.equal(baked[k].cpu(), v.cpu()) for k, v in decoded.state_dict().items())
    correct = correct_per_example(decoded, test.x, test.y)  # per test image: paired intervals
    acc = sum(correct) / len(correct)
    kept = sum(layer.codes.numel() for layer in layers.values())
    total = sum(layer.mask.numel() for layer in layers.values())
    return {
        "test_acc": correct, "acc_loss": dense_acc - acc, "packed_bytes": float(os.path.getsize(path)),
        "compression_rate": dense_bytes / os.path.getsize(path),
        "rate_weights_with_index": compression_rate_estimate(layers, with_index=True),
        "rate_weights_no_index": compression_rate_estimate(layers, with_index=False),
        "sparsity": 1 - kept / total,
        "avg_bits": sum(layer.codes.numel() * layer.bits for layer in layers.values()) / max(kept, 1),
        "codebook_floats": float(sum(layer.step.numel() + layer.offset.numel() for layer in layers.values())),
        "roundtrip_exact": float(exact), "decode_ms": decode_ms,
        **cost_columns(decoded, test.x[:1].to(ctx.device), repeats=cfg.latency_repeats),
    }


def layer_table(plans: dict) -> list[dict[str, Any]]:
    return [{"layer": name, "numel": plan.mask.numel(), "allocated_ratio": round(plan.ratio, 4),
             "sparsity": round(plan.sparsity, 4), "bits": plan.bits, "step": float(plan.step.mean())}
            for name, plan in plans.items()]


def pretrain(cfg: "OPQConfig", train_split: Split, seed: int, ctx) -> torch.nn.Module:
    model = build_model(cfg, ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.pretrain_lr)
    train(model, Batches(train_split, cfg.batch_size, seed=seed), optimizer, cfg.pretrain_epochs,
          checkpoint=ctx.checkpoint("dense"), device=ctx.device, progress=False)
    return model


def run_arm(dense: torch.nn.Module, arm: str, sparsity: float, bits: float, data: tuple[Split, Split],
            cfg: "OPQConfig", seed: int, ctx, dense_ref: dict) -> dict[str, Any]:
    train_split, test = data
    key = arm_key(arm, sparsity, bits)
    torch.manual_seed(seed)
    clock = Stopwatch()
    if arm == "iterative":
        model = iterative_arm(dense, train_split, cfg, seed, sparsity, int(bits), clock)
        extra: dict[str, Any] = {"finetune_epochs": float(cfg.iterative_epochs)}
    else:
        model, plans, before = one_shot_arm(dense, arm, train_split, test, cfg, seed, sparsity, bits, clock)
        extra = {"test_acc_one_shot": before, "layers": layer_table(plans),
                 "finetune_epochs": float(cfg.finetune_epochs)}
    dense_acc = sum(dense_ref["test_acc"]) / len(dense_ref["test_acc"])
    metrics = measure_packed(model, key, cfg, ctx, test, dense_ref["packed_bytes"], dense_acc)
    return {**metrics, "finetune_s": clock.wall, "finetune_cpu_s": clock.cpu, **extra}


def dense_reference(dense: torch.nn.Module, test: Split, cfg: "OPQConfig", ctx) -> dict[str, float]:
    path = ctx.dir / "dense_fp32.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in dense.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    return {"test_acc": correct_per_example(dense, test.x, test.y), "acc_loss": 0.0,
            "packed_bytes": float(os.path.getsize(path)),
            "compression_rate": 1.0, **cost_columns(dense, test.x[:1].to(ctx.device), repeats=cfg.latency_repeats)}
