"""GDP (honed, arXiv:2109.02220) beside torch-pruning's MetaPruner with magnitude importance, at equal
MACs, on the same trained ResNet-s, in one run.

Steps: train a dense ResNet-s on digits; GDP gated training from it towards a MACs target, export
(channels physically removed), short finetune; torch-pruning prunes a copy of the same dense model
with the smallest uniform pruning ratio whose MACs do not exceed GDP's, then gets the same finetune
(``torch_pruning_equal_epochs`` also gets GDP's gated epochs). Columns: test accuracy, parameters,
MACs (one image), median CPU latency at batch 1 and 64 (models interleaved) and speedup vs dense.

The peer is optional: without ``pip install torch-pruning==1.6.1`` (the ``peers`` extra) its columns
are skipped with a message. Writes benchmarks/results/bench_prune.json; figures are measured, never typed.
Usage: python benchmarks/bench_prune.py [--size 16|32] [--seed 0] [--repeats 30] [--threads 0] [--quick]
"""
import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from honed.core.atomic import atomic_write_json
from honed.core.loop import split_accuracy, train
from honed.core.measure import count_macs
from honed.core.seed import environment, seed_everything, torch_threads
from honed.data import Batches
from honed.experiments.e28_gdp import (CosineLR, GDPConfig, build_resnet, cost_table, finetune,
                                       load_data, train_gdp)

PEER_INSTALL = "pip install torch-pruning==1.6.1"
COLUMNS = ("test_acc", "params", "macs", "macs_fraction", "latency_b1_ms", "latency_b64_ms", "speedup_b1",
           "speedup_b64")


def load_peer():
    try:
        import torch_pruning
    except ImportError:
        print(f"torch-pruning is not installed: its columns are skipped. Install the peer with: {PEER_INSTALL}")
        return None
    return torch_pruning


def torch_pruning_at_macs(tp, dense: torch.nn.Module, example: torch.Tensor, macs_budget: int,
                          steps: int = 14) -> tuple[torch.nn.Module, float]:
    """MetaPruner (L1 magnitude importance, uniform per-layer ratio, head kept) at the smallest ratio
    whose pruned copy of ``dense`` needs at most ``macs_budget`` MACs (bisection)."""
    def prune(ratio: float) -> torch.nn.Module:
        model = copy.deepcopy(dense).eval()
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[model.head])
        pruner.step()
        return model

    if count_macs(dense, example) <= macs_budget:
        return copy.deepcopy(dense), 0.0
    lo, hi = 0.0, 0.95
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count_macs(prune(mid), example) <= macs_budget else (mid, hi)
    return prune(hi), hi


def run(cfg: GDPConfig, seed: int) -> dict:
    seed_everything(seed)
    train_split, val, test = load_data(cfg)
    dense = build_resnet(cfg)
    opt = torch.optim.SGD(dense.parameters(), lr=cfg.dense_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train(dense, Batches(train_split, cfg.batch_size, seed=seed), opt, cfg.dense_epochs, callbacks=[CosineLR()],
          progress=False)
    dense.eval()
    start = time.perf_counter()
    gdp, _ = train_gdp(dense, train_split, val, cfg, seed)
    gdp.enforce_target()
    models = {"dense": dense, "gdp": gdp.export().eval()}
    acc_before = {"gdp": split_accuracy(models["gdp"], test)}
    finetune(models["gdp"], train_split, val, cfg, cfg.finetune_epochs, seed, cfg.finetune_lr)
    timing = {"gdp_train_and_export_s": time.perf_counter() - start}
    tp = load_peer()
    if tp is not None:
        start = time.perf_counter()
        budget = count_macs(models["gdp"], test.x[:1])
        pruned, ratio = torch_pruning_at_macs(tp, dense, test.x[:1], budget)
        if count_macs(pruned, test.x[:1]) > budget:
            print(f"torch-pruning could not get within GDP's MACs ({budget}) at ratio <= 0.95")
        timing["torch_pruning_search_s"], timing["torch_pruning_ratio"] = time.perf_counter() - start, ratio
        models["torch_pruning"], models["torch_pruning_equal_epochs"] = pruned, copy.deepcopy(pruned)
        acc_before["torch_pruning"] = split_accuracy(pruned, test)
        finetune(models["torch_pruning"], train_split, val, cfg, cfg.finetune_epochs, seed, cfg.finetune_lr)
        finetune(models["torch_pruning_equal_epochs"], train_split, val, cfg, cfg.finetune_epochs + cfg.gdp_epochs,
                 seed, cfg.finetune_lr)
    table = cost_table(models, test.x, cfg.latency_repeats)
    for name, model in models.items():
        table[name]["test_acc"] = split_accuracy(model, test)
        if name in acc_before:
            table[name]["test_acc_before_finetune"] = acc_before[name]
    return {"table": table, "timing": timing, "peer_available": tp is not None}


def print_table(table: dict) -> None:
    names = list(table)
    print(f"{'column':<16}" + "".join(f"{n:>28}" for n in names))
    for col in COLUMNS + ("test_acc_before_finetune",):
        cells = [table[n].get(col) for n in names]
        print(f"{col:<16}" + "".join(f"{'-' if v is None else format(v, '.4g'):>28}" for v in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, choices=(16, 32))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="the experiment's smoke preset (a check, not a figure)")
    args = parser.parse_args(argv)
    base = GDPConfig.smoke() if args.quick else GDPConfig()
    cfg = replace(base, image_size=args.size, latency_repeats=args.repeats, seeds=(args.seed,), threads=args.threads)
    with torch_threads(args.threads):
        out = run(cfg, args.seed)
        env = environment("cpu")
    print_table(out["table"])
    gdp = out["table"]["gdp"]
    print(f"GDP: MACs {gdp['macs_fraction']:.3f} of dense; latency {gdp['speedup_b1']:.2f}x (batch 1), "
          f"{gdp['speedup_b64']:.2f}x (batch 64) faster than dense; accuracy {gdp['test_acc']:.4f} vs dense "
          f"{out['table']['dense']['test_acc']:.4f}")
    result = {"benchmark": "prune_gdp_vs_torch_pruning", "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
              **out, "environment": env, "peer_install": PEER_INSTALL,
              "claims_are_about": {"macs_fraction": "MACs", "speedup_b64": "measured latency, batch 64",
                                   "speedup_b1": "measured latency, batch 1"}}
    atomic_write_json(Path(__file__).parent / "results" / "bench_prune.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
