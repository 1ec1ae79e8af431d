"""TernGrad's DDP step time beside fp32, fp16 and PowerSGD, measured on loopback and modelled at
emulated link speeds (issue 15; TernGrad: Ternary Gradients to Reduce Communication, arXiv:1705.07878).

Two gloo CPU workers (honed.distributed.launch.run_workers, one torch thread each) train experiment
18's model (MLP 64-256-256-10, per-worker batch 128 of fixed random inputs) under five arms, all built
in the same processes and interleaved: each round runs a few steps of every arm, the order reversed on
odd rounds. Arms: ``local`` (no DDP: the compute floor), ``fp32`` (torch's ``allreduce_hook``, the
Python twin of DDP's built-in fp32 all-reduce, so its bytes can be counted), ``fp16``
(``fp16_compress_hook``), ``powersgd`` (``powerSGD_hook``, experiment 18's rank 2, after its fp32 warm-up
steps) and ``terngrad`` (honed's hook, card defaults).

Measured per arm and round (median over the round's steps; a step's value is the larger of the two
workers', since synchronous training waits for the slower): the wall time of a step on loopback, the
process CPU time of a step (forward, backward, update, the hook's encode/decode and gloo's threads:
what the step costs; robust to the neighbours on a loaded machine), and the bytes every collective
was handed (counted by wrapping ``torch.distributed.all_reduce`` / ``all_gather``).

MODELLED step time at a link of B bit/s (no pacing transport; stated as a model in every output):
``step = CPU time per step (compute + encode/decode, measured) + wire bytes * 8 / B``, where the wire
bytes per worker follow the ring traffic pattern of each collective: an all-reduce of M bytes sends
``2 (W - 1) / W * M`` per worker (fp32, fp16, PowerSGD, TernGrad's scalers), an all-gather of m bytes
per worker sends ``(W - 1) * m`` (TernGrad's codes); at W = 2 both are the message size. The model
assumes no overlap of communication with computation (every arm alike) and no per-message latency
(the number of collectives per step is reported beside it).

Target (issue 15): TernGrad faster than fp32, fp16 and PowerSGD wherever the link is the bottleneck,
i.e. where fp32's wire time exceeds its CPU time. Ratio = the largest of TernGrad / peer (modelled
step, median of per-round ratios); target <= 1. Writes benchmarks/results/terngrad_step_<B>gbit.json.
Usage: python benchmarks/bench_terngrad.py [--rounds 61] [--steps 8]
"""
import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from honed.core.benchmark import results_folder, spread, write_result

ARMS = ("local", "fp32", "fp16", "powersgd", "terngrad")
PEERS = ("fp32", "fp16", "powersgd")
LINKS_GBIT = (1.0, 10.0)
TARGET = 1.0
WORLD = 2
BATCH_PER_WORKER = 128
DEFAULT_HIDDEN = (256, 256)  # experiment 18's TernGradConfig.hidden
# One bucket for every arm and model width used here: torch's powerSGD_hook aborted with a gloo
# collective mismatch ("Received data size doesn't match expected size") on a model spanning two buckets
# on this machine (its callbacks issue collectives from gloo's threads); one bucket keeps every arm alike.
BUCKET_CAP_MB = 64.0
RESULTS = results_folder(Path(__file__).parent / "results")  # or $HONED_BENCHMARKS


def _build_arms(seed: int, hidden: tuple[int, ...]) -> dict:
    """Every arm's (model, optimizer, codec timers) in this worker; DDP arms share the default group."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    from honed.distributed.terngrad_hook import TernGradState, terngrad_hook
    from honed.experiments.e18_terngrad import TernGradConfig, build_mlp

    cfg = replace(TernGradConfig(), hidden=hidden)
    arms = {}
    for arm in ARMS:
        torch.manual_seed(seed)
        model = build_mlp(cfg)
        net = model if arm == "local" else DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
        if arm == "fp32":
            net.register_comm_hook(None, default_hooks.allreduce_hook)
        elif arm == "fp16":
            net.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif arm == "powersgd":
            state = powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=cfg.powersgd_rank,
                                                start_powerSGD_iter=cfg.powersgd_start_iter, random_seed=seed)
            net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        elif arm == "terngrad":
            net.register_comm_hook(TernGradState(clip_factor=cfg.clip_factor, min_numel=cfg.min_numel, seed=seed),
                                   terngrad_hook)
        arms[arm] = (net, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum))
    return arms


class CollectiveLog:
    """Wraps ``torch.distributed.all_reduce`` / ``all_gather`` (what the hooks call) and logs, per
    call, the kind and the bytes of the tensor this worker hands in; and times TernGrad's codec steps
    (thread CPU time of the scaler pass, the encoding and the decoding)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        import honed.distributed.terngrad_hook as hook_module

        self.calls: list[tuple[str, int]] = []
        self.codec: dict[str, float] = defaultdict(float)
        self._originals = [(dist, "all_reduce"), (dist, "all_gather")] + [
            (hook_module, name) for name in ("_shared_scalers", "_encode", "_decode")]
        self._saved = [getattr(mod, name) for mod, name in self._originals]
        dist.all_reduce = self._logged("all_reduce", dist.all_reduce)
        dist.all_gather = self._logged("all_gather", dist.all_gather, tensor_arg=1)
        for name in ("_shared_scalers", "_encode", "_decode"):
            setattr(hook_module, name, self._timed(name.strip("_"), getattr(hook_module, name)))

    def _logged(self, kind: str, fn, tensor_arg: int = 0):
        def wrapper(*args, **kwargs):
            tensor = args[tensor_arg] if len(args) > tensor_arg else kwargs["tensor"]
            self.calls.append((kind, tensor.numel() * tensor.element_size()))
            return fn(*args, **kwargs)
        return wrapper

    def _timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.codec[name] += time.thread_time() - start
        return wrapper

    def restore(self) -> None:
        for (mod, name), original in zip(self._originals, self._saved):
            setattr(mod, name, original)


def _steps(arm: str, net, opt, x, y, steps: int, log: CollectiveLog) -> dict:
    """``steps`` training steps of one arm: per-step wall and CPU seconds, collectives and bytes."""
    import torch.distributed as dist

    walls, cpus = [], []
    log.calls.clear()
    log.codec.clear()
    for _ in range(steps):
        if arm != "local":
            dist.barrier()  # both workers start the step together (not timed)
        wall, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wire = sum(_wire_bytes(kind, size) for kind, size in log.calls) / steps
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "wire_bytes": wire,
            "handed_bytes": sum(size for _, size in log.calls) / steps, "collectives": len(log.calls) / steps,
            "codec_cpu": {k: v / steps for k, v in log.codec.items()}}


def _wire_bytes(kind: str, size: int, world: int = WORLD) -> float:
    """Bytes one worker sends for a collective it hands ``size`` bytes, ring pattern (module doc)."""
    return 2 * (world - 1) / world * size if kind == "all_reduce" else (world - 1) * size


def bench_worker(rank: int, world: int, rounds: int, steps: int, warmup: int, seed: int,
                 hidden: tuple[int, ...]) -> list[dict]:
    """One worker: build every arm, warm each up (PowerSGD passes its fp32 start), then ``rounds``
    interleaved rounds of ``steps`` steps per arm; returns ``{"rounds": [{arm: measurements}, ...],
    "rng_cpu": seconds}``."""
    arms = _build_arms(seed, hidden)
    data = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(BATCH_PER_WORKER, 64, generator=data), torch.randint(0, 10, (BATCH_PER_WORKER,), generator=data)
    log = CollectiveLog()
    try:
        for arm, (net, opt) in arms.items():
            _steps(arm, net, opt, x, y, warmup, log)
        names, per_round = list(arms), []
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            per_round.append({arm: _steps(arm, *arms[arm], x, y, steps, log) for arm in order})
    finally:
        log.restore()
    numel = sum(p.numel() for p in arms["terngrad"][0].parameters())
    return {"rounds": per_round, "rng_cpu": _uniform_cpu(numel, seed)}


def _uniform_cpu(numel: int, seed: int, repeats: int = 7) -> float:
    """Thread CPU seconds to draw ``numel`` uniforms from torch's CPU generator (median): the part of
    TernGrad's encoding fixed by keeping the hook's random stream, hence its gradients, unchanged."""
    generator, buffer, times = torch.Generator().manual_seed(seed), torch.empty(numel), []
    for _ in range(repeats):
        start = time.thread_time()
        buffer.uniform_(0, 1, generator=generator)
        times.append(time.thread_time() - start)
    return statistics.median(times)


def _slower_worker(per_rank: list[dict]) -> list[dict]:
    """Per round and arm, the larger wall and CPU time of the workers (the step waits for the slower)."""
    merged = []
    for rounds in zip(*(worker["rounds"] for worker in per_rank)):
        merged.append({arm: dict(rounds[0][arm], wall=max(r[arm]["wall"] for r in rounds),
                                 cpu=max(r[arm]["cpu"] for r in rounds)) for arm in ARMS})
    return merged


def modelled(measure: dict, gbit: float) -> float:
    """Modelled step seconds at a ``gbit`` Gbit/s link: CPU time + wire bytes / bandwidth."""
    return measure["cpu"] + measure["wire_bytes"] * 8 / (gbit * 1e9)


def _median(rounds: list[dict], arm: str, key: str) -> float:
    return statistics.median(r[arm][key] for r in rounds)


def loopback_summary(rounds: list[dict]) -> dict:
    """Measured loopback wall and CPU time per step of every arm, and TernGrad / fp32 (paired rounds)."""
    summary = {arm: {clock: spread([r[arm][clock] * 1e3 for r in rounds]) for clock in ("wall", "cpu")}
               for arm in ARMS}
    for arm in ARMS:
        summary[arm].update(wire_bytes=_median(rounds, arm, "wire_bytes"), collectives=_median(rounds, arm, "collectives"))
    summary["terngrad_over_fp32"] = {clock: spread([r["terngrad"][clock] / r["fp32"][clock] for r in rounds])
                                     for clock in ("wall", "cpu")}
    return summary


def link_summary(rounds: list[dict], gbit: float) -> dict:
    """Modelled step ms per arm at ``gbit`` and TernGrad / peer per round; whether the link is the bottleneck."""
    steps = {arm: spread([modelled(r[arm], gbit) * 1e3 for r in rounds]) for arm in ARMS if arm != "local"}
    ratios = {peer: spread([modelled(r["terngrad"], gbit) / modelled(r[peer], gbit) for r in rounds]) for peer in PEERS}
    fp32_wire_ms = _median(rounds, "fp32", "wire_bytes") * 8 / (gbit * 1e9) * 1e3
    fp32_cpu_ms = _median(rounds, "fp32", "cpu") * 1e3
    worst = max(PEERS, key=lambda p: ratios[p]["median"])
    return {"gbit_per_s": gbit, "modelled_step_ms": steps, "terngrad_over_peer": ratios, "worst_peer": worst,
            "ratio": ratios[worst]["median"], "link_is_bottleneck": fp32_wire_ms > fp32_cpu_ms,
            "fp32_wire_ms": fp32_wire_ms, "fp32_cpu_ms": fp32_cpu_ms}


def reasons(rounds: list[dict], link: dict, uniform_ms: float) -> list[str]:
    """For every peer TernGrad does not beat: the measured CPU it spends more and the wire time it saves."""
    lines = []
    codec = {k: statistics.median(r["terngrad"]["codec_cpu"].get(k, 0.0) for r in rounds) * 1e3
             for k in ("shared_scalers", "encode", "decode")}
    gbit = link["gbit_per_s"]
    for peer in PEERS:
        if link["terngrad_over_peer"][peer]["median"] <= TARGET:
            continue
        local = _median(rounds, "local", "cpu")
        ours, theirs = ((_median(rounds, arm, "cpu") - local) * 1e3 for arm in ("terngrad", peer))
        saved_wire = (_median(rounds, peer, "wire_bytes") - _median(rounds, "terngrad", "wire_bytes")) * 8 / (gbit * 1e9) * 1e3
        rest = ours - sum(codec.values())
        lines.append(f"  measured reason vs {peer} at {gbit:g} Gbit/s: CPU per step above the no-DDP step: TernGrad "
                     f"{ours:.2f} ms (thread CPU of scalers+their all-reduce {codec['shared_scalers']:.2f}, encode "
                     f"{codec['encode']:.2f} of which drawing u {uniform_ms:.2f}, decode {codec['decode']:.2f}, rest "
                     f"(DDP, 2 collectives) {rest:.2f}) vs {peer} {theirs:.2f} ms: {ours - theirs:+.2f} ms CPU against "
                     f"{saved_wire:+.2f} ms of wire time saved")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=61)  # 15 left TernGrad / fp16 at 1 Gbit/s flipping between runs
    parser.add_argument("--steps", type=int, default=8, help="steps per arm and round")
    parser.add_argument("--warmup", type=int, default=4, help="steps per arm before timing (PowerSGD needs 2)")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(DEFAULT_HIDDEN),
                        help="hidden widths of the MLP (default: experiment 18's); another width is a second "
                             "setting, written as terngrad_step_<B>gbit_h<widths>.json")
    args = parser.parse_args(argv)
    import torch._dynamo  # noqa: F401  DDP imports it lazily; load it once so forked workers share it

    from honed.distributed.launch import run_workers

    hidden = tuple(args.hidden)
    per_rank = run_workers(bench_worker, WORLD, (args.rounds, args.steps, args.warmup, 0, hidden),
                           start_method="fork", timeout_s=600)
    report(_slower_worker(per_rank), args.steps, hidden, RESULTS, max(w["rng_cpu"] for w in per_rank))
    return 0


def report(rounds: list[dict], steps: int, hidden: tuple[int, ...], folder: Path, rng_cpu: float) -> list[dict]:
    """Print the loopback measurements and every link's modelled ratios; write one result per link."""
    loopback = loopback_summary(rounds)
    print(f"loopback, measured (median ms per step over {len(rounds)} rounds x {steps} steps; wall | CPU):")
    for arm in ARMS:
        m = loopback[arm]
        print(f"  {arm:>8}: wall {m['wall']['median']:6.2f} (q {m['wall']['q25']:.2f}-{m['wall']['q75']:.2f}) | "
              f"CPU {m['cpu']['median']:5.2f} | wire {m['wire_bytes'] / 1e3:7.1f} kB/step, {m['collectives']:.0f} collectives")
    for clock in ("wall", "cpu"):
        r = loopback["terngrad_over_fp32"][clock]
        print(f"  TernGrad / fp32 on loopback ({clock}): {r['median']:.3f} (quartiles {r['q25']:.3f}-{r['q75']:.3f})")
    details = {"loopback_measured": loopback, "rounds": len(rounds), "steps_per_round": steps, "world_size": WORLD,
               "model": f"MLP 64-{'-'.join(map(str, hidden))}-10 (experiment 18's: 64-256-256-10), batch "
                        f"{BATCH_PER_WORKER} per worker, one DDP bucket", "hidden": list(hidden),
               "links": {f"{gbit:g}": link_summary(rounds, gbit) for gbit in LINKS_GBIT},
               "terngrad_uniform_draw_cpu_ms": rng_cpu * 1e3}
    suffix = "" if hidden == DEFAULT_HIDDEN else "_h" + "x".join(map(str, hidden))
    return [_report_link(rounds, details, gbit, suffix, folder) for gbit in LINKS_GBIT]


def _report_link(rounds: list[dict], details: dict, gbit: float, suffix: str, folder: Path) -> dict:
    link = details["links"][f"{gbit:g}"]
    steps = " | ".join(f"{arm} {link['modelled_step_ms'][arm]['median']:.2f}" for arm in link["modelled_step_ms"])
    print(f"MODELLED at {gbit:g} Gbit/s (CPU + wire bytes / bandwidth), ms per step: {steps}")
    for peer in PEERS:
        r = link["terngrad_over_peer"][peer]
        print(f"  TernGrad / {peer}: {r['median']:.3f} (quartiles {r['q25']:.3f}-{r['q75']:.3f}), target <= {TARGET}")
    bottleneck = "yes" if link["link_is_bottleneck"] else "no: the issue's target does not apply here"
    print(f"  link is the bottleneck (fp32 wire {link['fp32_wire_ms']:.2f} ms > its CPU {link['fp32_cpu_ms']:.2f} ms): {bottleneck}")
    for line in reasons(rounds, link, details["terngrad_uniform_draw_cpu_ms"]):
        print(line)
    notes = (f"MODELLED step time at {gbit:g} Gbit/s = measured CPU time per step + measured wire bytes / bandwidth "
             f"(ring all-reduce 2(W-1)/W M, all-gather (W-1) m per worker; no overlap, no latency); ratio = worst "
             f"TernGrad / peer ({link['worst_peer']}); the target applies where the link is the bottleneck: "
             f"{link['link_is_bottleneck']}")
    return write_result(f"terngrad_step_{gbit:g}gbit{suffix}", link["ratio"], TARGET, "<=",
                        "x (TernGrad / fastest peer, modelled step time)", notes,
                        dict(details, this_link=f"{gbit:g}", target_applies=link["link_is_bottleneck"]), 1, folder,
                        applies=link["link_is_bottleneck"])


if __name__ == "__main__":
    sys.exit(main())
