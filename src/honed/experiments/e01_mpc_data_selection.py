"""01-mpc-data-selection: SelectFormer (arXiv:2310.02373) on digits - multiphase entropy selection with
MLP-emulated proxies, costed by real 2-party CrypTen runs, vs Oracle (plaintext target entropy) and
Random.

Per seed: a tiny Transformer target (2 blocks, h 32, 2 heads, FFN 64) is pretrained on the disjoint
val split (R) and adapted on D_boot (6 labeled per class). The data owner's pool comes from the train
split, class-imbalanced (geometric class sizes) with ~30% near-duplicates (1-pixel shifts + noise).
Proxies P1 (1 block, d 2) and P2 (2 blocks, d 8): emulators fitted on Gaussian synthetic inputs, then
finetuned end to end on D_boot (CE + KD). Sieve: P1 keeps a_1 |S_0|, P2 keeps B. The target, P1 and
P2 are each run under real 2-party MPC (two gloo processes on loopback, CrypTen) on ``mpc_examples``
pool items; the per-example seconds and bytes give the selection cost of direct MPC evaluation
(N x c_target) and of the sieve (N c_P1 + |S_1| c_P2). The selection itself is computed in plaintext
with the same code (the MPC outputs match it within fixed-point error, which is measured). Each
selection is scored by the test accuracy of the target finetuned identically on D_boot U selected.
"""
import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, SeedOutput, register_experiment
from honed.data import create_dataset
from honed.private.mpc import measure_mpc_costs
from honed.private.proxy_selection import (TinyTransformer, check_pool, entropy_from_logits, fit_emulators,
                                           image_tokens, make_proxy, multiphase_select, phase_sizes,
                                           secure_topk_standin, selection_cost)

ARMS = ("selectformer", "proxy_1phase", "oracle", "random")


@dataclass(frozen=True)
class MPCSelectionConfig(ExperimentConfig):
    pool_size: int = 600
    budget: int = 100
    boot_per_class: int = 6
    duplicate_fraction: float = 0.3
    imbalance_ratio: float = 0.2  # smallest / largest class size in the pool
    selectivity: float = 0.4  # a_1 of P1; P2 keeps B
    proxy_widths: tuple[int, int] = (2, 8)
    proxy_blocks: tuple[int, int] = (1, 2)
    fuse_ffn: bool = True  # (R) fusion boundary
    synthetic_factor: int = 20  # (R)
    kd_weight: float = 0.5  # (R)
    emulator_steps: int = 300
    pretrain_epochs: int = 60
    adapt_epochs: int = 30
    proxy_epochs: int = 30
    finetune_epochs: int = 40
    lr: float = 3e-3
    mpc_examples: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    @classmethod
    def smoke(cls):
        return replace(cls(), pool_size=200, budget=40, pretrain_epochs=10, adapt_epochs=5, proxy_epochs=5,
                       finetune_epochs=8, emulator_steps=40, mpc_examples=1, seeds=(0,))

    def validate(self):
        if not 1 <= self.budget < self.pool_size:
            raise ConfigError(f"budget must be in [1, pool_size), got {self.budget} for pool {self.pool_size}")
        if not 0 < self.selectivity <= 1 or self.mpc_examples < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ConfigError("selectivity must be in (0, 1], mpc_examples >= 1, duplicate_fraction in [0, 1)")


def _fit(model, x, y, epochs, lr, seed, teacher=None, kd_weight=0.0, batch=64):
    """Adam minibatch training (CE, plus KD to ``teacher``'s logits when given)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    soft = None if teacher is None else teacher(x).detach().softmax(-1)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if soft is not None and kd_weight > 0:
                kd = F.kl_div(logits.log_softmax(-1), soft[idx], reduction="batchmean")
                loss = (1 - kd_weight) * loss + kd_weight * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model(split.x).argmax(1) == split.y).float().mean())


def build_pool(train, cfg, seed):
    """D_boot (boot_per_class per class) and an imbalanced pool with near-duplicates (x (N, 64), y)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    x, y = train.x[perm], train.y[perm]
    boot = torch.cat([torch.nonzero(y == c).flatten()[:cfg.boot_per_class] for c in range(10)])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[boot] = False
    rx, ry = x[rest], y[rest]
    n_unique = round(cfg.pool_size * (1 - cfg.duplicate_fraction))
    weights = torch.tensor([cfg.imbalance_ratio ** (c / 9) for c in range(10)])
    counts = (weights / weights.sum() * n_unique).round().long()
    keep = torch.cat([torch.nonzero(ry == c).flatten()[:int(counts[c])] for c in range(10)])
    ux, uy = rx[keep], ry[keep]
    src = torch.randint(0, len(ux), (cfg.pool_size - len(ux),), generator=gen)
    shifts = torch.randint(-1, 2, (len(src), 2), generator=gen)
    dup = torch.stack([torch.roll(ux[i].view(8, 8), tuple(s.tolist()), (0, 1)).flatten() for i, s in zip(src, shifts)])
    dup = (dup + 0.05 * torch.randn(dup.shape, generator=gen)).clamp(0, 1)
    pool_x, pool_y = torch.cat([ux, dup]), torch.cat([uy, uy[src]])
    return (x[boot], y[boot]), (pool_x, pool_y)


@register_experiment
class MPCDataSelectionExperiment(Experiment):
    id = "01-mpc-data-selection"
    title = "SelectFormer: private data selection with MLP-emulated proxies under 2-party MPC"
    family = "private"
    paper = "SelectFormer in Data Markets (arXiv:2310.02373)"
    summary = ("A model owner picks B of N unlabeled examples by predictive entropy without seeing the pool: "
               "cheap proxies (softmax / LayerNorm / FFN chains replaced by small MLPs) sieve the pool in two "
               "phases under MPC. Costs are measured with real 2-party CrypTen runs; the selected set's "
               "value is the test accuracy of the target finetuned on it, vs Oracle and Random.")
    Config = MPCSelectionConfig
    method = ("selectformer",)
    baselines = ("oracle", "random", "proxy_1phase")
    reconstructed = ("fusion boundary: row softmax, LayerNorm1, final LayerNorm, fused LayerNorm2+FFN (fuse_ffn)",
                     "per-dimension Gaussian fit of chain inputs (gaussian_fit=per_dim)",
                     "synthetic inputs = synthetic_factor (20) x recorded inputs",
                     "proxy finetuning CE + KD from the target (kd_weight 0.5)",
                     "target pretrained on the disjoint val split, then adapted on D_boot",
                     "no labels bought between phases (card step 7 not implemented)")
    claims_tested = ("selection >= 10x cheaper than direct MPC evaluation of the target",
                     "accuracy after training on the selection within 0.5 point of Oracle")

    def run_seed(self, cfg, seed, ctx) -> SeedOutput:
        torch.manual_seed(seed)
        data = create_dataset("digits", flat=True)
        (bx, by), (px, py) = build_pool(data.train, cfg, seed)
        check_pool(px, py)
        target = _fit(TinyTransformer(), data.val.x, data.val.y, cfg.pretrain_epochs, cfg.lr, seed)
        target = _fit(target, bx, by, cfg.adapt_epochs, cfg.lr, seed + 1)
        target.eval()
        proxies = [self._proxy(cfg, target, bx, by, blocks, width, seed + 10 * k)
                   for k, (blocks, width) in enumerate(zip(cfg.proxy_blocks, cfg.proxy_widths))]
        scorer = lambda m: (lambda x: entropy_from_logits(m(x)))  # noqa: E731
        sizes = phase_sizes(len(px), cfg.budget, [cfg.selectivity])
        with torch.no_grad():
            oracle_scores = entropy_from_logits(target(px))
        picks = {"oracle": secure_topk_standin(oracle_scores, cfg.budget),
                 "random": torch.randperm(len(px), generator=torch.Generator().manual_seed(seed))[:cfg.budget],
                 "proxy_1phase": multiphase_select(px, [scorer(proxies[0])], [cfg.budget])[0],
                 "selectformer": multiphase_select(px, [scorer(p) for p in proxies], sizes)[0]}
        mpc = measure_mpc_costs({"target": target, "p1": proxies[0], "p2": proxies[1]},
                                image_tokens(px[:cfg.mpc_examples]))
        arms = self._arms(cfg, seed, target, picks, (bx, by), (px, py), data.test)
        self._add_costs(arms, mpc, len(px), sizes, cfg.budget)
        with torch.no_grad():
            plain = {"target": target, "p1": proxies[0], "p2": proxies[1]}
            errs = {f"{k}_mpc_entropy_abs_error": float((mpc[k]["output"] - entropy_from_logits(
                m(px[:cfg.mpc_examples]))).abs().max()) for k, m in plain.items()}
        extra = {"mpc_entropy_max_abs_error": max(errs.values()), **errs, "phase_sizes": sizes,
                 **{f"{k}_{m}": float(v[m]) for k, v in mpc.items()
                    for m in ("seconds_per_example", "bytes_per_example", "rounds_per_batch")}}
        return SeedOutput(arms=arms, extra=extra)

    def _proxy(self, cfg, target, bx, by, blocks, width, seed):
        proxy = make_proxy(target, blocks, width, fuse_ffn=cfg.fuse_ffn)
        fit_emulators(proxy, target, bx, synthetic_factor=cfg.synthetic_factor, steps=cfg.emulator_steps, seed=seed)
        _fit(proxy, bx, by, cfg.proxy_epochs, cfg.lr, seed, teacher=target, kd_weight=cfg.kd_weight)
        return proxy.eval()

    def _arms(self, cfg, seed, target, picks, boot, pool, test):
        arms, oracle = {}, set(picks["oracle"].tolist())
        for arm in ARMS:
            idx = picks[arm]
            model = copy.deepcopy(target).train()
            x, y = torch.cat([boot[0], pool[0][idx]]), torch.cat([boot[1], pool[1][idx]])
            _fit(model, x, y, cfg.finetune_epochs, cfg.lr, seed + 2)
            arms[arm] = {"test_acc": _accuracy(model.eval(), test),
                         "oracle_recall": len(oracle & set(idx.tolist())) / cfg.budget,
                         "classes_selected": float(len(torch.unique(pool[1][idx])))}
        return arms

    def _add_costs(self, arms, mpc, n, sizes, budget):
        for unit in ("seconds", "bytes"):
            key = f"{unit}_per_example"
            direct = selection_cost(n, [budget], [mpc["target"][key]])
            ours = selection_cost(n, sizes, [mpc["p1"][key], mpc["p2"][key]])
            one = selection_cost(n, [budget], [mpc["p1"][key]])
            arms["oracle"][f"selection_{unit}"] = direct  # direct MPC = Oracle's choice at MPC cost
            arms["selectformer"][f"selection_{unit}"] = ours
            arms["proxy_1phase"][f"selection_{unit}"] = one
            arms["selectformer"][f"cost_ratio_{unit}"] = direct / ours
            arms["proxy_1phase"][f"cost_ratio_{unit}"] = direct / one

    def claims(self, cfg, result):
        ratio = result.mean("selectformer", "cost_ratio_seconds")
        dip = result.mean("oracle", "test_acc") - result.mean("selectformer", "test_acc")
        return [Claim.check("selection_cost_ratio_direct_over_ours", ratio, ">=", 10.0,
                            "~200x lower delay than direct MPC (reviewers); card target >= 10x",
                            metric="cost_ratio_seconds"),
                Claim.check("accuracy_dip_vs_oracle", dip, "<=", 0.005,
                            "~0.20% accuracy loss vs Oracle; card target <= 0.5 point", metric="test_acc")]

    def notes(self, cfg, result):
        m = lambda a, k: result.mean(a, k)  # noqa: E731
        notes = [f"measured MPC per example (2 parties, loopback): target {result.extra['target_seconds_per_example']['mean']:.3f} s, "
                 f"P1 {result.extra['p1_seconds_per_example']['mean']:.3f} s, P2 {result.extra['p2_seconds_per_example']['mean']:.3f} s; "
                 f"MPC vs plaintext entropy max error {result.extra['mpc_entropy_max_abs_error']['mean']:.4f}",
                 f"bytes ratio direct/ours {m('selectformer', 'cost_ratio_bytes'):.1f}x; "
                 f"seconds ratio {m('selectformer', 'cost_ratio_seconds'):.1f}x (2-block target: the per-example "
                 "entropy and embedding costs shared by every model bound the ratio; the paper's ~200x is for "
                 "12-block, long-sequence models)"]
        gap = m("oracle", "test_acc") - m("random", "test_acc")
        if gap <= 0:
            notes.append(f"Oracle is not above Random here (gap {gap:+.4f}): the accuracy comparison is void")
        return notes
