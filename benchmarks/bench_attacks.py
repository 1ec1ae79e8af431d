"""honed's attacks against torchattacks and foolbox, side by side on one trained digits CNN.

Same model, same images (the first 200 correctly classified digits test images), same settings:

* CW at fixed c (c = 1, kappa 0, Adam lr 0.01, 100 steps): honed CW, guided CW (A, B), torchattacks CW;
* CW with binary search (9 steps from c = 1e-3, 100 steps per c): honed CW, guided CW (A, B), foolbox
  L2CarliniWagnerAttack;
* PGD L-inf (eps 0.1, alpha 0.01, 20 steps) and PGD L2 (eps 1.0, alpha 0.1, 20 steps): honed vs
  torchattacks.

Success is re-checked by classifying each returned image (an image equal to foolbox's all-zero fallback
counts as a failure, whatever foolbox reports). "forwards to adversarial" is measured identically for
every implementation by a wrapper around the model: the index of the first forward call whose input was
adversarial. Time per step = attack wall time / steps (median over rounds). Targets: guided CW reaches
CW's success in <= half the iterations at no larger L2; honed's time per step <= torchattacks'.
Writes benchmarks/results/bench_attacks.json. Peers: ``pip install --no-deps torchattacks==3.5.1``,
``pip install foolbox==3.3.4`` (or ``pip install 'honed[peers]'``); a missing one is skipped.
"""
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from honed.core.atomic import atomic_write_json
from honed.core.seed import environment
from honed.robust.attacks import CW, PGD, PGDL2, GuidedCW
from honed.robust.victims import correctly_classified, train_digits_classifier

PEER_INSTALL = {"torchattacks": "pip install --no-deps torchattacks==3.5.1",
                "foolbox": "pip install foolbox==3.3.4"}
CW_FIXED = dict(c=1.0, kappa=0.0, lr=0.01, steps=100)
CW_SEARCH = dict(c=1e-3, binary_search_steps=9, steps=100, lr=0.01)
PGD_LINF = dict(eps=0.1, alpha=0.01, steps=20)
PGD_L2 = dict(eps=1.0, alpha=0.1, steps=20)


class ForwardRecorder(nn.Module):
    """Wraps a classifier: counts forward calls and records, per example of the attacked batch, the
    first call whose input was adversarial (argmax != label)."""

    def __init__(self, model: nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.model, self.labels = model, labels
        self.calls = 0
        self.first = torch.full((len(labels),), -1, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.calls += 1
        if len(x) == len(self.labels):
            new = (out.detach().argmax(1) != self.labels) & (self.first < 0)
            self.first[new] = self.calls
        return out


def load_peer(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        print(f"[skip] {name} is not installed: its columns are skipped. Install it with: "
              f"{PEER_INSTALL[name]}  (or pip install 'honed[peers]')")
        return None


def unverified(attack):
    """honed attacks classify their output once more to fill last_stats.success; the peers do not,
    so the timed runs skip it (success is re-checked here for every implementation alike)."""
    attack.verify = False
    return attack


def run_once(make_attack, model, x, y) -> dict:
    """One timed attack through a fresh recorder; returns the raw measurements."""
    recorder = ForwardRecorder(model, y).eval()
    attack = make_attack(recorder)
    start = time.perf_counter()
    out = attack(x, y)
    elapsed = time.perf_counter() - start
    x_adv, claimed = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    stats = getattr(attack, "last_stats", None)
    steps = stats.iterations if stats is not None else recorder.calls
    return {"x_adv": x_adv.detach(), "claimed": claimed, "elapsed": elapsed, "steps": steps,
            "forwards_to_adv": recorder.first.clone(), "stats": stats}


def summarise(name: str, setting: str, runs: list[dict], model, x, y, fallback_zero: bool) -> dict:
    """Success re-checked on the last run's images; median time per step over the runs."""
    last = runs[-1]
    with torch.no_grad():
        success = model(last["x_adv"]).argmax(1) != y
    if fallback_zero:  # foolbox returns zeros where it found nothing
        success &= ~(last["x_adv"].flatten(1) == 0).all(1)
    l2 = (last["x_adv"] - x).flatten(1).norm(dim=1)
    stats = last["stats"]
    tracked = stats is not None and stats.iterations_to_success is not None
    iters = stats.iterations_to_success[success].float() if tracked else torch.empty(0)
    fwd = last["forwards_to_adv"][success & (last["forwards_to_adv"] > 0)].float()
    median = lambda t: float(t.median()) if len(t) else None  # noqa: E731
    return {
        "setting": setting, "attack": name, "success": float(success.float().mean()),
        "claimed_success": float(last["claimed"].float().mean()) if last["claimed"] is not None else None,
        "mean_l2": float(l2[success].mean()) if success.any() else None,
        "median_iterations_to_success": median(iters), "median_forwards_to_adversarial": median(fwd),
        "steps": last["steps"],
        "ms_per_step": statistics.median(1e3 * r["elapsed"] / max(r["steps"], 1) for r in runs),
        "_success": success, "_l2": l2, "_iterations": stats.iterations_to_success if tracked else None,
    }


def measure_group(setting: str, attacks: dict, model, x, y, rounds: int) -> list[dict]:
    """Run every attack of a setting ``rounds`` times, interleaved so machine noise hits all alike."""
    runs: dict[str, list[dict]] = {name: [] for name in attacks}
    for _ in range(rounds):
        for name, (make, _) in attacks.items():
            runs[name].append(run_once(make, model, x, y))
    return [summarise(name, setting, runs[name], model, x, y, fallback) for name, (_, fallback) in attacks.items()]


def ours_cw(setting: dict) -> dict:
    return {"honed CW": (lambda m: unverified(CW(m, **setting)), False),
            "honed guided CW A": (lambda m: unverified(GuidedCW(m, variant="A", **setting)), False),
            "honed guided CW B": (lambda m: unverified(GuidedCW(m, variant="B", **setting)), False)}


def foolbox_cw(fb):
    def make(model):
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=CW_SEARCH["binary_search_steps"],
                                                  steps=CW_SEARCH["steps"], stepsize=CW_SEARCH["lr"],
                                                  confidence=0, initial_const=CW_SEARCH["c"], abort_early=True)

        def run(x, y):
            _, clipped, success = attack(fmodel, x, y, epsilons=None)
            return clipped, success

        return run

    return make


def settings(ta, fb) -> dict[str, dict]:
    groups = {"cw fixed c=1": ours_cw(dict(CW_FIXED, binary_search_steps=1)),
              "cw binary search": ours_cw(CW_SEARCH),
              "pgd linf": {"honed PGD": (lambda m: unverified(PGD(m, **PGD_LINF)), False)},
              "pgd l2": {"honed PGD-L2": (lambda m: unverified(PGDL2(m, **PGD_L2)), False)}}
    if ta is not None:
        groups["cw fixed c=1"]["torchattacks CW"] = (lambda m: ta.CW(m, **CW_FIXED), False)
        groups["pgd linf"]["torchattacks PGD"] = (lambda m: ta.PGD(m, random_start=True, **PGD_LINF), False)
        groups["pgd l2"]["torchattacks PGD-L2"] = (lambda m: ta.PGDL2(m, random_start=True, **PGD_L2), False)
    if fb is not None:
        groups["cw binary search"]["foolbox CW"] = (foolbox_cw(fb), True)
    return groups


def row(rows: list[dict], setting: str, attack: str) -> dict | None:
    return next((r for r in rows if r["setting"] == setting and r["attack"] == attack), None)


def target(value: float | None, goal: float, comparison: str = "<=") -> dict:
    met = value is not None and (value <= goal if comparison == "<=" else value >= goal)
    return {"value": value, "target": f"{comparison} {goal}", "met": met}


def guided_targets(rows: list[dict], variant: str) -> dict:
    """Binary-search setting: success, common-set L2 ratio and median-iteration ratio vs honed CW."""
    cw, gcw = row(rows, "cw binary search", "honed CW"), row(rows, "cw binary search", f"honed guided CW {variant}")
    both = cw["_success"] & gcw["_success"]
    l2_ratio = float(gcw["_l2"][both].mean() / cw["_l2"][both].mean()) if both.any() else None
    it_ratio = (float(gcw["_iterations"][both].float().median() / cw["_iterations"][both].float().median())
                if both.any() else None)
    return {f"guided CW {variant}: success - CW success": target(gcw["success"] - cw["success"], -0.01, ">="),
            f"guided CW {variant}: median iterations to success / CW's (common successes)": target(it_ratio, 0.5),
            f"guided CW {variant}: mean L2 / CW's (common successes)": target(l2_ratio, 1.0)}


def speed_targets(rows: list[dict]) -> dict:
    pairs = {"CW": ("cw fixed c=1", "honed CW", "torchattacks CW"),
             "PGD": ("pgd linf", "honed PGD", "torchattacks PGD"),
             "PGD-L2": ("pgd l2", "honed PGD-L2", "torchattacks PGD-L2")}
    out = {}
    for label, (setting, ours, theirs) in pairs.items():
        a, b = row(rows, setting, ours), row(rows, setting, theirs)
        if a is not None and b is not None:
            out[f"{label}: honed / torchattacks time per step"] = target(a["ms_per_step"] / b["ms_per_step"], 1.0)
    return out


def print_table(rows: list[dict]) -> None:
    cols = [("setting", 17), ("attack", 20), ("success", 8), ("claimed", 8), ("mean_l2", 8),
            ("med_iters", 9), ("med_fwd_adv", 11), ("steps", 6), ("ms/step", 8)]
    keys = ["setting", "attack", "success", "claimed_success", "mean_l2", "median_iterations_to_success",
            "median_forwards_to_adversarial", "steps", "ms_per_step"]
    print(" ".join(f"{name:>{w}}" for name, w in cols))
    for r in rows:
        cells = [r[k] for k in keys]
        print(" ".join(f"{('-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)):>{w}}"
                       for v, (_, w) in zip(cells, cols)))


def main(n_images: int = 200, rounds: int = 3) -> int:
    ta, fb = load_peer("torchattacks"), load_peer("foolbox")
    victim = train_digits_classifier("cnn", size=8, epochs=20, seed=0)
    x, y = correctly_classified(victim.model, victim.data.test.x, victim.data.test.y, n_images)
    rows: list[dict] = []
    for setting, attacks in settings(ta, fb).items():
        rows += measure_group(setting, attacks, victim.model, x, y, 1 if "search" in setting else rounds)
    print_table(rows)
    targets = {**guided_targets(rows, "A"), **guided_targets(rows, "B"), **speed_targets(rows)}
    for name, t in targets.items():
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{name}: {value} (target {t['target']}) -> {'met' if t['met'] else 'NOT met'}")
    out = {"benchmark": "attacks", "n_images": len(x), "victim_test_accuracy": victim.test_accuracy,
           "rounds": rounds, "settings": {"cw_fixed": CW_FIXED, "cw_search": CW_SEARCH, "pgd_linf": PGD_LINF,
                                          "pgd_l2": PGD_L2},
           "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "targets": targets,
           "missing_peers": [n for n, m in (("torchattacks", ta), ("foolbox", fb)) if m is None],
           "environment": environment("cpu")}
    atomic_write_json(Path(__file__).parent / "results" / "bench_attacks.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
