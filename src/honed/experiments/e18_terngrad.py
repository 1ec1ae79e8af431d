"""18-terngrad: TernGrad ternary gradients vs fp32 / fp16 / PowerSGD exchange, in real DDP processes and
in a single-process simulation of N workers (TernGrad, arXiv:1705.07878).

Part A (real DDP, gloo CPU): for each world size W, W worker processes train the MLP 64-256-256-10 on
digits (70/30 split); every global batch of 256 is cut into W equal shards, worker r trains on shard r.
Arms, all in one launch per world size and seed: DDP's default fp32 all-reduce, the TernGrad hook,
torch's ``fp16_compress_hook`` and torch's ``powerSGD_hook`` (rank ``powersgd_rank``, default 2).
Part B (card): one process simulates N in {2, 4, 8} workers with ``torch.func`` (one gradient per
shard) and compares float SGD, TernGrad (layer-wise, c=2.5, shared max), TernGrad without clipping
(s = max|g|) and TernGrad with one global scaler; it measures E||ḡ - g_float||^2 along training.
"""
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.evidence import smax
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import Callback, correct_per_example, train
from honed.data import create_dataset
from honed.data.base import Batches, Split
from honed.distributed.terngrad import aggregate_ternary, message_bytes
from honed.models import create_model

DDP_ARMS = ("fp32", "terngrad", "fp16", "powersgd")
SIM_ARMS = ("float", "terngrad", "terngrad_noclip", "terngrad_global")
# fork shares the parent's imported torch (spawned workers re-import torch and torch._dynamo, which
# DDP pulls in: ~4 s per launch here vs ~0.2 s forked). Workers still end with os._exit.
START_METHOD = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else "spawn"


def start_method_used() -> str:
    """The start method run_workers really uses: it turns "fork" into "spawn" once CUDA is initialised
    (a forked child cannot use the parent's CUDA context); the gloo DDP arms stay on the CPU either way."""
    return "spawn" if START_METHOD == "fork" and torch.cuda.is_initialized() else START_METHOD


@dataclass(frozen=True)
class TernGradConfig(ExperimentConfig):
    epochs: int = 40
    batch_size: int = 256  # global batch, cut into equal shards per worker
    lr: float = 0.1
    momentum: float = 0.9
    optimizer: Literal["sgd", "adam"] = "sgd"  # card: momentum SGD lr 0.1; Adam lr 1e-3 second setting
    weight_decay: float = 5e-4  # added to the loss, so its gradient is ternarised too (card step 1)
    hidden: tuple[int, ...] = (256, 256)
    clip_factor: float = 2.5
    global_clip_factor: float = 2.5  # scaler rule of the one-global-scaler variant (only scope changes)
    min_numel: int = 1  # tensors smaller stay fp32; 1 = ternarise all (the code's --size_to_binarize)
    quantize_last_layer: bool = True  # the code's --quantize_logits
    world_sizes: tuple[int, ...] = (2, 4)
    sim_workers: tuple[int, ...] = (2, 4, 8)
    powersgd_rank: int = 2
    powersgd_start_iter: int = 2  # fp32 all-reduce before it (torch's minimum with error feedback)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # card: 3; 5 so the paired accuracy intervals can decide 1 point
    threads: int = 1  # tiny MLP: one torch thread is fastest (DDP workers set their own)

    @classmethod
    def smoke(cls) -> "TernGradConfig":
        return replace(cls(), epochs=3, world_sizes=(2,), sim_workers=(2,), seeds=(0,))

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if not self.world_sizes or not self.sim_workers:
            raise ConfigError("world_sizes and sim_workers must each list at least one worker count")
        for n in (*self.world_sizes, *self.sim_workers):
            if n < 1 or self.batch_size % n:
                raise ConfigError(f"worker count {n} must be >= 1 and divide batch_size {self.batch_size}")
        if self.clip_factor < 0 or self.global_clip_factor < 0 or self.min_numel < 0 or self.powersgd_rank < 1:
            raise ConfigError("clip factors and min_numel must be >= 0, powersgd_rank >= 1")


def build_mlp(cfg: TernGradConfig) -> torch.nn.Module:
    """The card's MLP 64-hidden-10 without BatchNorm (shards see different batches)."""
    return create_model("mlp", in_features=64, hidden=tuple(cfg.hidden), num_classes=10, bn=False)


def make_optimizer(params, cfg: TernGradConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def load_digits() -> dict[str, torch.Tensor]:
    data = create_dataset("digits", flat=True, fractions=(0.7, 0.0, 0.3))
    return {"train_x": data.train.x, "train_y": data.train.y, "test_x": data.test.x, "test_y": data.test.y}


class ShardBatches:
    """Global batches of ``Batches`` cut into ``world`` equal contiguous shards; yields shard ``rank``."""

    def __init__(self, batches: Batches, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield x.chunk(self.world)[self.rank], y.chunk(self.world)[self.rank]


class StepTimer(Callback):
    """Wall time of each optimizer step (forward, backward with the exchange, update)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_start(self, state) -> None:
        self._start = time.perf_counter()

    def after_step(self, state) -> None:
        self.times.append(time.perf_counter() - self._start)


# ----------------------------------------------------------------------------- Part A: real DDP

def powersgd_bytes(shapes: list[torch.Size], rank: int, min_compression_rate: float = 2.0) -> int:
    """Bytes torch's powerSGD_hook sends per step after its warm-up: for each gradient viewed as an
    (n, m) matrix with r = min(n, m, rank), the fp32 factors P (n x r) and Q (m x r) when
    ``(n + m) r * min_compression_rate < n m`` (torch's rule), else the fp32 tensor itself."""
    total = 0
    for shape in shapes:
        n = shape[0] if len(shape) else 1
        m = max(1, int(torch.Size(shape).numel()) // max(n, 1))
        r = min(n, m, rank)
        total += 4 * (n + m) * r if (n + m) * r * min_compression_rate < n * m else 4 * n * m
    return total


def _attach_hook(ddp, model, arm: str, cfg: TernGradConfig, seed: int):
    """Register the arm's comm hook; return a function giving bytes sent per step by this worker."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from honed.distributed.terngrad_hook import TernGradState, terngrad_hook

    numel = sum(p.numel() for p in model.parameters())
    if arm == "terngrad":
        last = () if cfg.quantize_last_layer else tuple(model[-1].parameters())
        state = TernGradState(clip_factor=cfg.clip_factor, min_numel=cfg.min_numel,
                              float_parameters=last, seed=seed)
        ddp.register_comm_hook(state, terngrad_hook)
        return lambda: state.bytes_per_step
    if arm == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return lambda: 2 * numel
    if arm == "powersgd":
        state = powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=cfg.powersgd_rank,
                                            start_powerSGD_iter=cfg.powersgd_start_iter, random_seed=seed)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        shapes = [p.shape for p in model.parameters()]
        return lambda: powersgd_bytes(shapes, cfg.powersgd_rank, state.min_compression_rate)
    return lambda: 4 * numel


def _train_ddp_arm(rank: int, world: int, arm: str, cfg: TernGradConfig, seed: int,
                   data: dict[str, torch.Tensor]) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(seed)
    model = build_mlp(cfg)
    ddp = DDP(model)
    bytes_per_step = _attach_hook(ddp, model, arm, cfg, seed)
    optimizer = make_optimizer(model.parameters(), cfg)
    weights = list(model.parameters())

    def loss_fn(logits, y):
        return F.cross_entropy(logits, y) + 0.5 * cfg.weight_decay * sum(w.pow(2).sum() for w in weights)

    batches = ShardBatches(Batches(Split(data["train_x"], data["train_y"]), cfg.batch_size, seed=seed,
                                   drop_last=True), rank, world)
    timer = StepTimer()
    history = train(ddp, batches, optimizer, cfg.epochs, loss_fn=loss_fn, callbacks=[timer], progress=False)
    losses = torch.tensor(history["train_loss"])
    dist.all_reduce(losses)
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    correct = correct_per_example(model, data["test_x"], data["test_y"])  # per test example: paired intervals
    return {"test_acc": correct, "bytes_per_step": float(bytes_per_step()), "fp32_bytes_per_step": 4.0 * len(flat),
            "step_ms": 1000 * statistics.median(timer.times[2:] or timer.times),
            "replica_max_abs_diff": float(spread), "train_loss": (losses / world).tolist()}


def ddp_worker(rank: int, world: int, cfg: TernGradConfig, seed: int, data: dict[str, torch.Tensor]) -> dict:
    """One DDP worker process: trains every Part-A arm in turn (module level: picklable for spawn)."""
    return {arm: _train_ddp_arm(rank, world, arm, cfg, seed, data) for arm in DDP_ARMS}


def run_ddp(cfg: TernGradConfig, seed: int, world: int, data: dict[str, torch.Tensor]) -> dict:
    import torch._dynamo  # noqa: F401  DDP imports it lazily; load it once here so forked workers share it

    from honed.distributed.launch import run_workers

    results = run_workers(ddp_worker, world, (cfg, seed, data), start_method=START_METHOD)
    return results[0]  # replicas are identical (checked: replica_max_abs_diff); rank 0 reports


# ----------------------------------------------------------------------------- Part B: simulation

def _sim_exchange(arm: str, stacked: list[torch.Tensor], cfg: TernGradConfig, last_flags: list[bool],
                  generators: list[torch.Generator]) -> list[torch.Tensor]:
    if arm == "float":
        return [g.mean(0) for g in stacked]
    clip = {"terngrad": cfg.clip_factor, "terngrad_noclip": 0.0, "terngrad_global": cfg.global_clip_factor}[arm]
    scope = "global" if arm == "terngrad_global" else "layer"
    return aggregate_ternary(stacked, clip, scope, generators, cfg.min_numel, last_flags)


def simulate(arm: str, n_workers: int, cfg: TernGradConfig, seed: int,
             data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Train one Part-B arm with ``n_workers`` simulated workers; shard gradients via torch.func."""
    from torch.func import functional_call, grad_and_value, vmap

    torch.manual_seed(seed)
    model = build_mlp(cfg)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    optimizer = make_optimizer(params, cfg)
    last_flags = [(not cfg.quantize_last_layer) and n.startswith(f"{len(model) - 1}.") for n in names]
    generators = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(n_workers)]

    def shard_loss(weights, x, y):
        return F.cross_entropy(functional_call(model, weights, (x,)), y)

    shard_grads = vmap(grad_and_value(shard_loss), in_dims=(None, 0, 0))
    batches = Batches(Split(data["train_x"], data["train_y"]), cfg.batch_size, seed=seed, drop_last=True)
    losses, errors, norms = [], [], []
    for epoch in range(cfg.epochs):
        batches.set_epoch(epoch)
        epoch_loss = []
        for x, y in batches:
            weights = {n: p.detach() for n, p in zip(names, params)}
            grads, loss = shard_grads(weights, x.view(n_workers, -1, x.shape[1]), y.view(n_workers, -1))
            stacked = [grads[n] + cfg.weight_decay * p.detach() for n, p in zip(names, params)]
            exact = [g.mean(0) for g in stacked]
            sent = _sim_exchange(arm, stacked, cfg, last_flags, generators)
            errors.append(float(sum(((a - b) ** 2).sum() for a, b in zip(sent, exact))))
            norms.append(float(sum((b ** 2).sum() for b in exact)))
            for p, g in zip(params, sent):
                p.grad = g
            optimizer.step()
            penalty = 0.5 * cfg.weight_decay * sum(float(p.detach().pow(2).sum()) for p in params)
            epoch_loss.append(float(loss.mean()) + penalty)  # same objective as the DDP loss
        losses.append(statistics.fmean(epoch_loss))
    correct = correct_per_example(model, data["test_x"], data["test_y"])  # per test example: paired intervals
    return {"test_acc": correct, "grad_variance": statistics.fmean(errors),
            "relative_variance": statistics.fmean(errors) / statistics.fmean(norms), "train_loss": losses}


def simulate_arms(n_workers: int, cfg: TernGradConfig, seed: int, data: dict[str, torch.Tensor]) -> dict:
    """All Part-B arms at one worker count (torch threads come from ``cfg.threads``, default 1: the
    tensors are tiny, and on a busy 2-core machine two OpenMP threads made each op ~50x slower)."""
    return {arm: simulate(arm, n_workers, cfg, seed, data) for arm in SIM_ARMS}


# ----------------------------------------------------------------------------- the experiment

def formula_bytes(cfg: TernGradConfig) -> int:
    """Bytes per worker per step the TernGrad hook should send for this model (one bucket)."""
    model = build_mlp(cfg)
    last = set() if cfg.quantize_last_layer else {id(p) for p in model[-1].parameters()}
    ternary = [p for p in model.parameters() if p.numel() >= cfg.min_numel and id(p) not in last]
    floats = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in ternary)
    return message_bytes(sum(p.numel() for p in ternary), len(ternary), floats)


def _default_arms(prefix_sizes: tuple[str, tuple[int, ...]], arms: tuple[str, ...]) -> tuple[str, ...]:
    prefix, sizes = prefix_sizes
    return tuple(f"{prefix}{n}_{a}" for n in sizes for a in arms)


@register_experiment
class TernGradExperiment(Experiment):
    id = "18-terngrad"
    title = "TernGrad: ternary gradients for data-parallel SGD"
    family = "distributed"
    paper = "TernGrad: Ternary Gradients to Reduce Communication in Distributed Deep Learning (arXiv:1705.07878)"
    summary = ("Real DDP workers (gloo, CPU) exchange gradients as 2-bit packed ternary codes with shared "
               "layer-wise scalers, beside fp32 all-reduce, fp16 compression and PowerSGD; a single-process "
               "simulation of 2-8 workers compares layer-wise clipped TernGrad with its no-clip and "
               "global-scaler variants by accuracy and gradient variance.")
    Config = TernGradConfig
    method = (_default_arms(("ddp_w", (2, 4)), ("terngrad",))
              + _default_arms(("sim_n", (2, 4, 8)), ("terngrad", "terngrad_noclip", "terngrad_global")))
    baselines = (_default_arms(("ddp_w", (2, 4)), ("fp32", "fp16", "powersgd"))
                 + _default_arms(("sim_n", (2, 4, 8)), ("float",)))
    components = ("honed.distributed.terngrad_hook:terngrad_hook", "honed.distributed.terngrad_hook:TernGradState")
    reconstructed = (
        "scaler fallback to max|g| when c*std(g) is 0 (a constant tensor); the paper has no rule",
        "DDP hook: the shared-scaler all-reduce runs synchronously inside the hook (encoding needs it); the "
        "all-gather of packed codes runs asynchronously, decoded in its future's callback, and stands in for "
        "the paper's parameter server",
        "global-scaler variant uses the same rule as layer-wise (c*std, c=global_clip_factor) over the "
        "whole model's gradient",
    )

    def run_seed(self, cfg: TernGradConfig, seed: int, ctx) -> SeedOutput:
        data = load_digits()
        arms: dict[str, dict[str, float]] = {}
        curves: dict[str, dict[str, list[float]]] = {}
        for world in cfg.world_sizes:
            part = ctx.cached(f"ddp_w{world}", lambda: run_ddp(cfg, seed, world, data))
            for arm, metrics in part.items():
                arms[f"ddp_w{world}_{arm}"] = {k: v for k, v in metrics.items() if k != "train_loss"}
                curves.setdefault(f"train_loss_ddp_w{world}", {})[arm] = metrics["train_loss"]
        for n in cfg.sim_workers:
            part = ctx.cached(f"sim_n{n}", lambda: simulate_arms(n, cfg, seed, data))
            for arm, metrics in part.items():
                arms[f"sim_n{n}_{arm}"] = {k: v for k, v in metrics.items() if k != "train_loss"}
                curves.setdefault(f"train_loss_sim_n{n}", {})[arm] = metrics["train_loss"]
        return SeedOutput(arms=arms, curves=curves, extra={"launch_start_method": start_method_used(),
                                                           "terngrad_formula_bytes": formula_bytes(cfg)})

    def claims(self, cfg: TernGradConfig, result) -> list[Claim]:
        m = result.metric
        claims = []
        for w in cfg.world_sizes:
            gap = m(f"ddp_w{w}_fp32", "test_acc") - m(f"ddp_w{w}_terngrad", "test_acc")
            claims.append(Claim.check(
                f"DDP W={w}: fp32 - terngrad test acc", gap, "<=", 0.01, metric="test_acc", requires=(f"ddp_w{w}_fp32 above chance",),
                paper="TernGrad loses no accuracy vs float (AlexNet); card: within 1 point"))
        gaps = [m(f"sim_n{n}_float", "test_acc") - m(f"sim_n{n}_terngrad", "test_acc") for n in cfg.sim_workers]
        claims.append(Claim.check(
            "simulation: worst N of float - terngrad test acc", smax(*gaps), "<=", 0.01, metric="test_acc",
            requires=tuple(f"sim_n{n}_float above chance" for n in cfg.sim_workers),
            paper="card: TernGrad within 1 point of float SGD for N <= 8"))
        n = max(cfg.sim_workers)
        for variant in ("noclip", "global"):
            claims.append(Claim.check(
                f"simulation N={n}: grad variance {variant} / layer-wise clipped",
                m(f"sim_n{n}_terngrad_{variant}", "grad_variance") / m(f"sim_n{n}_terngrad", "grad_variance"),
                ">", 1.0, metric="grad_variance (E||g_bar - g_float||^2)", requires=(),
                paper="layer-wise scalers and clipping lower the variance (card: variants 3, 4 larger)"))
        return claims

    def preconditions(self, cfg: TernGradConfig, result) -> list[Precondition]:
        # "within 1 point of float" means something only when float SGD itself is well trained
        refs = [f"ddp_w{w}_fp32" for w in cfg.world_sizes] + [f"sim_n{n}_float" for n in cfg.sim_workers]
        return arms_above_chance(result, refs, "test_acc", chance=0.1, margin=0.8)

    def invariants(self, cfg: TernGradConfig, result) -> list[Invariant]:
        w = cfg.world_sizes[0]
        sent = result.mean(f"ddp_w{w}_terngrad", "bytes_per_step")
        fp32 = result.mean(f"ddp_w{w}_fp32", "bytes_per_step")
        formula = result.extra["terngrad_formula_bytes"]["mean"]
        return [Invariant.check(
                    "TernGrad hook bytes per step - formula (2-bit codes + fp32 scalers)", abs(sent - formula), "<=",
                    3 * len(list(build_mlp(cfg).parameters())),
                    "the hook counts the packed uint8 payload it hands to all_gather plus the scalers: its size is "
                    "ceil(n/4) + 4 B per scaler by construction of the packer (up to a byte of padding per bucket)"),
                Invariant.check(
                    "TernGrad / fp32 bytes per step", sent / fp32, "<=", 1 / 14,
                    "2 bits + 32 per tensor vs 32 bits per element: fixed by the code width and the model's shapes "
                    "(the paper's ~16x), not by training")]

    def notes(self, cfg: TernGradConfig, result) -> list[str]:
        w = cfg.world_sizes[0]
        tern, fp32 = result.mean(f"ddp_w{w}_terngrad", "bytes_per_step"), result.mean(f"ddp_w{w}_fp32", "bytes_per_step")
        formula = result.extra["terngrad_formula_bytes"]["mean"]
        notes = [f"TernGrad sends {tern:.0f} B/step per worker vs {fp32:.0f} B for fp32 all-reduce "
                 f"(1/{fp32 / tern:.1f}); formula {formula:.0f} B (packed codes ceil(n/4) + 4 B per scaler + "
                 f"4 B per fp32 element); the ideal on large tensors is 1/16.",
                 "Bytes are per worker per step as the message each worker contributes; the all-gather "
                 "relays each message to N-1 peers, so per-link traffic grows with N unlike ring all-reduce.",
                 f"PowerSGD (rank {cfg.powersgd_rank}) bytes are its steady state after "
                 f"{cfg.powersgd_start_iter} fp32 warm-up steps, from the gradient shapes and torch's rule.",
                 f"DDP workers launched with start_method="
                 f"{', '.join(sorted(set(result.extra['launch_start_method']['values'])))}."]
        n = max(cfg.sim_workers)
        accs = {a: result.mean(f"sim_n{n}_{a}", "test_acc") for a in SIM_ARMS}
        worse = [a for a in ("terngrad_noclip", "terngrad_global") if accs[a] < accs["terngrad"]]
        notes.append(f"Simulation N={n} test acc: " + ", ".join(f"{a} {v:.4f}" for a, v in accs.items())
                     + f"; variants below layer-wise TernGrad: {', '.join(worse) or 'none'} (the card expects "
                     "both to be lower or slower; a larger variance need not cost accuracy on digits).")
        diffs = [result.mean(f"ddp_w{w}_{a}", "replica_max_abs_diff") for w in cfg.world_sizes for a in DDP_ARMS]
        notes.append(f"Largest parameter difference between DDP replicas at the end: {max(diffs):.3g}.")
        return notes

    def plot(self, result, fig) -> bool:
        cfg_w = [int(k.split("_w")[1]) for k in result.curves if k.startswith("train_loss_ddp_w")]
        sim_n = [int(k.split("_n")[1]) for k in result.curves if k.startswith("train_loss_sim_n")]
        ax_acc, ax_ddp, ax_sim = fig.subplots(1, 3)
        for w, marker in zip(cfg_w, "os^v"):
            for arm, color in zip(DDP_ARMS, ("C0", "C1", "C2", "C3")):
                arm_id = f"ddp_w{w}_{arm}"
                ax_acc.scatter(result.mean(arm_id, "bytes_per_step"), result.mean(arm_id, "test_acc"),
                               marker=marker, color=color, alpha=0.7, label=f"{arm} W={w}")
        ax_acc.set(xscale="log", xlabel="bytes per worker per step", ylabel="test accuracy", title="DDP arms")
        for ax, key in ((ax_ddp, f"train_loss_ddp_w{max(cfg_w)}"), (ax_sim, f"train_loss_sim_n{max(sim_n)}")):
            for arm, ys in result.curves[key].items():
                ax.plot(range(1, len(ys) + 1), ys, "-" if "tern" in arm else "--", label=arm)
            ax.set(yscale="log", xlabel="epoch", ylabel="train loss", title=key)
        for ax in (ax_acc, ax_ddp, ax_sim):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        return True
