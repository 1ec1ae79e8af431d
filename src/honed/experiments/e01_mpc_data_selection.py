"""01-mpc-data-selection: SelectFormer (arXiv:2310.02373) on digits - multiphase entropy selection with
MLP-emulated proxies, costed by real 2-party CrypTen runs, vs Oracle (plaintext target entropy) and
Random.

Per seed: a tiny Transformer target (``target_blocks`` = 4 blocks, h 32, 2 heads, FFN 64) is pretrained
on the disjoint val split (R) and adapted on D_boot (6 labeled per class). The card's reproduction names
a 2-block target, but its algorithm step 3 builds P_i from the bottom L_i < L blocks (strictly fewer) and
its P2 has 2 blocks, so the target is deepened to 4 to keep both proxies strictly shallower. The data
owner's pool comes from the train split, class-imbalanced (geometric class sizes) with ~30%
near-duplicates (1-pixel shifts + noise). Proxies P1 (1 block, d 2) and P2 (2 blocks, d 8): emulators
fitted on Gaussian synthetic inputs, then finetuned end to end on D_boot (CE + KD). Sieve: P1 keeps
a_1 |S_0|; optionally (``phase_labels`` > 0, card step 7) the model owner buys that many labels at random
from S_1 and re-finetunes P2 on D_boot plus them; P2 keeps B.

The target's LayerNorms get public range scales calibrated on D_boot (``calibrate_norm_scales``):
CrypTen's inv_sqrt is accurate only on about [0.15, 100] and the first LayerNorm's input variance is
far below it; plaintext outputs are unchanged. The target, P1, P2 and an entropy-only floor (no model)
are each run under real 2-party MPC (two gloo processes on loopback, CrypTen) on one batch of
``mpc_examples`` pool items. Batch 32: CrypTen's rounds are per batch, so a batch of 1-8 mostly measures
per-round latency that a real sieve amortises over the batches it pipelines (card step 9, MPS); 32 is
the largest batch whose target run fits the smoke/small time budgets (~3.5 s per target pass). The
per-example seconds and bytes give the selection cost of direct MPC evaluation (N x c_target) and of
the sieve (N c_P1 + |S_1| c_P2). The selection itself is computed in plaintext with the same code (the
MPC outputs match it within fixed-point error, which is measured). Each selection is scored by the test
accuracy of the target finetuned identically on D_boot U selected (bought phase labels are not added).
"""
import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, SeedOutput, register_experiment
from honed.data import create_dataset
from honed.private.mpc import EntropyOnly, measure_mpc_costs
from honed.private.proxy_selection import (TinyTransformer, calibrate_norm_scales, check_pool, entropy_from_logits,
                                           fit_emulators, image_tokens, make_proxy, multiphase_select,
                                           phase_sizes, secure_topk_standin, selection_cost)

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
    target_blocks: int = 4  # card step 3: proxies take strictly fewer blocks than the target
    phase_labels: int = 0  # (R) card step 7: labels bought at random from S_1 to re-finetune P2; 0 = off
    fuse_ffn: bool = True  # (R) fusion boundary
    synthetic_factor: int = 20  # (R)
    kd_weight: float = 0.5  # (R)
    emulator_steps: int = 300
    pretrain_epochs: int = 60
    adapt_epochs: int = 30
    proxy_epochs: int = 30
    finetune_epochs: int = 40
    lr: float = 3e-3
    mpc_examples: int = 32  # one MPC batch (see module docstring)
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    @classmethod
    def smoke(cls):
        return replace(cls(), pool_size=200, budget=40, pretrain_epochs=10, adapt_epochs=5, proxy_epochs=5,
                       finetune_epochs=8, emulator_steps=40, mpc_examples=8, seeds=(0,))

    def validate(self):
        if not 1 <= self.budget < self.pool_size:
            raise ConfigError(f"budget must be in [1, pool_size), got {self.budget} for pool {self.pool_size}")
        if not 0 < self.selectivity <= 1 or self.mpc_examples < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ConfigError("selectivity must be in (0, 1], mpc_examples >= 1, duplicate_fraction in [0, 1)")
        if len(self.proxy_blocks) != 2 or len(self.proxy_widths) != 2:
            raise ConfigError(f"need 2 proxies (proxy_blocks, proxy_widths), got {self.proxy_blocks}, "
                              f"{self.proxy_widths}")
        if not all(1 <= b < self.target_blocks for b in self.proxy_blocks):
            raise ConfigError(f"proxy_blocks {self.proxy_blocks} must be in [1, target_blocks - 1] (card step 3: "
                              f"L_i < L = {self.target_blocks})")
        if not 0 <= self.phase_labels <= round(self.pool_size * self.selectivity):
            raise ConfigError(f"phase_labels must be in [0, |S_1| = {round(self.pool_size * self.selectivity)}], "
                              f"got {self.phase_labels}")


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
    components = ("honed.private.proxy_selection:make_proxy", "honed.private.proxy_selection:fit_emulators",
                  "honed.private.proxy_selection:multiphase_select",
                  "honed.private.proxy_selection:calibrate_norm_scales", "honed.private.mpc:measure_mpc_costs")
    reconstructed = ("fusion boundary: row softmax, LayerNorm1, final LayerNorm, fused LayerNorm2+FFN (fuse_ffn)",
                     "per-dimension Gaussian fit of chain inputs (gaussian_fit=per_dim)",
                     "synthetic inputs = synthetic_factor (20) x recorded inputs",
                     "proxy finetuning CE + KD from the target (kd_weight 0.5)",
                     "target pretrained on the disjoint val split, then adapted on D_boot",
                     "card step 7: phase_labels labels bought at random from S_1 to re-finetune P2 (CE + KD on "
                     "D_boot + them) before phase 2; default 0 = off (the card gives no number)",
                     "target deepened to target_blocks = 4 (card: 2) so both proxies are strictly shallower (step 3)",
                     "public LayerNorm range scales of the target calibrated on D_boot (CrypTen inv_sqrt range)")
    claims_tested = ("selection >= 10x cheaper than direct MPC evaluation of the target",
                     "accuracy after training on the selection within 0.5 point of Oracle")

    def run_seed(self, cfg, seed, ctx) -> SeedOutput:
        torch.manual_seed(seed)
        data = create_dataset("digits", flat=True)
        (bx, by), (px, py) = build_pool(data.train, cfg, seed)
        check_pool(px, py)
        target = _fit(TinyTransformer(n_blocks=cfg.target_blocks), data.val.x, data.val.y, cfg.pretrain_epochs,
                      cfg.lr, seed)
        target = _fit(target, bx, by, cfg.adapt_epochs, cfg.lr, seed + 1).eval()
        calibration = calibrate_norm_scales(target, bx)  # model owner's own data; plaintext unchanged
        proxies = [self._proxy(cfg, target, bx, by, blocks, width, seed + 10 * k)
                   for k, (blocks, width) in enumerate(zip(cfg.proxy_blocks, cfg.proxy_widths))]
        picks, sizes, p2 = self._select(cfg, seed, target, proxies, (bx, by), (px, py))
        models = {"target": target, "p1": proxies[0], "p2": p2}
        mpc = measure_mpc_costs({**models, "entropy_only": EntropyOnly(target.classes)},
                                image_tokens(px[:cfg.mpc_examples]))
        arms = self._arms(cfg, seed, target, picks, (bx, by), (px, py), data.test)
        self._add_costs(arms, mpc, len(px), sizes, cfg.budget)
        with torch.no_grad():
            errs = {f"{k}_mpc_entropy_abs_error": float((mpc[k]["output"] - entropy_from_logits(
                m(px[:cfg.mpc_examples]))).abs().max()) for k, m in models.items()}
        extra = {"mpc_entropy_max_abs_error": max(errs.values()), **errs, "phase_sizes": sizes,
                 "target_norm_calibration": calibration,
                 "target_norm_all_in_range": float(all(c["fits"] for c in calibration.values())),
                 **{f"{k}_{m}": float(v[m]) for k, v in mpc.items()
                    for m in ("seconds_per_example", "bytes_per_example", "rounds_per_batch")}}
        return SeedOutput(arms=arms, extra=extra)

    def _select(self, cfg, seed, target, proxies, boot, pool):
        """Oracle, Random, 1-phase and SelectFormer picks; phase 2 after optional bought labels (step 7)."""
        px, py = pool
        scorer = lambda m: (lambda x: entropy_from_logits(m(x)))  # noqa: E731
        sizes = phase_sizes(len(px), cfg.budget, [cfg.selectivity])
        with torch.no_grad():
            oracle_scores = entropy_from_logits(target(px))
        s1 = multiphase_select(px, [scorer(proxies[0])], sizes[:1])[0]
        p2 = proxies[1]
        if cfg.phase_labels > 0:  # the DO releases labels of a random sample of S_1 (only membership is known)
            bought = s1[torch.randperm(len(s1), generator=torch.Generator().manual_seed(seed + 5))[:cfg.phase_labels]]
            p2 = copy.deepcopy(p2).train()
            _fit(p2, torch.cat([boot[0], px[bought]]), torch.cat([boot[1], py[bought]]), cfg.proxy_epochs, cfg.lr,
                 seed + 20, teacher=target, kd_weight=cfg.kd_weight)
            p2.eval()
        picks = {"oracle": secure_topk_standin(oracle_scores, cfg.budget),
                 "random": torch.randperm(len(px), generator=torch.Generator().manual_seed(seed))[:cfg.budget],
                 "proxy_1phase": multiphase_select(px, [scorer(proxies[0])], [cfg.budget])[0],
                 "selectformer": s1[multiphase_select(px[s1], [scorer(p2)], sizes[1:])[0]]}
        return picks, sizes, p2

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
        e = lambda k: result.extra[k]["mean"]  # noqa: E731
        models = ("target", "p1", "p2", "entropy_only")
        per = ", ".join(f"{k} {e(k + '_seconds_per_example'):.4f} s / {e(k + '_bytes_per_example') / 1e3:.0f} kB / "
                        f"{e(k + '_rounds_per_batch'):.0f} rounds" for k in models)
        notes = [f"measured MPC per example at batch {cfg.mpc_examples} (2 parties, loopback; seconds / bytes sent / "
                 f"rounds per batch): {per}",
                 "MPC vs plaintext entropy max abs error (nats): " + ", ".join(
                     f"{k} {e(k + '_mpc_entropy_abs_error'):.4f}" for k in models[:3])
                 + f"; target LayerNorm scales put every recorded D_boot variance range inside CrypTen's inv_sqrt "
                 f"range in {e('target_norm_all_in_range'):.0%} of seeds"]
        n, s1 = cfg.pool_size, result.extra["phase_sizes"]["values"][0][0]
        bound = n * e("target_seconds_per_example") / ((n + s1) * e("entropy_only_seconds_per_example"))
        notes.append(f"cost ratio direct/ours: seconds {m('selectformer', 'cost_ratio_seconds'):.1f}x, bytes "
                     f"{m('selectformer', 'cost_ratio_bytes'):.1f}x. The secret-shared entropy alone (no model) "
                     f"costs {e('entropy_only_seconds_per_example'):.4f} s per example, so even free proxies could "
                     f"not beat {bound:.1f}x in seconds for a {cfg.target_blocks}-block, 16-token target (the "
                     "paper's ~200x is for 12-block, long-sequence models whose forward dwarfs the entropy)")
        gap = m("oracle", "test_acc") - m("random", "test_acc")
        notes.append(f"test acc: oracle {m('oracle', 'test_acc'):.4f}, selectformer "
                     f"{m('selectformer', 'test_acc'):.4f}, 1-phase {m('proxy_1phase', 'test_acc'):.4f}, random "
                     f"{m('random', 'test_acc'):.4f}; oracle recall of selectformer "
                     f"{m('selectformer', 'oracle_recall'):.2f}")
        if gap <= 0:
            notes.append(f"Oracle is not above Random here (gap {gap:+.4f}): the accuracy comparison is void")
        return notes
