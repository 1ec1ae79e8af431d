"""01-mpc-data-selection: SelectFormer (arXiv:2310.02373) on digits - multiphase entropy selection with
MLP-emulated proxies, costed by real 2-party CrypTen runs, vs Oracle (plaintext target entropy) and
Random.

Per seed: a tiny Transformer target (``target_blocks`` = 4 blocks, h 32, 2 heads, FFN 64) is pretrained
on the disjoint val split (R) and adapted on D_boot (6 labeled per class). The card's reproduction names
a 2-block target, but its algorithm step 3 builds P_i from the bottom L_i < L blocks (strictly fewer) and
its P2 has 2 blocks, so the target is deepened to 4 to keep both proxies strictly shallower (``full``: 12, the
paper's BERT/ViT-base depth; see :class:`MPCSelectionConfig`). The data
owner's pool comes from the train split, class-imbalanced (geometric class sizes) with ~30%
near-duplicates (1-pixel shifts + noise). Proxies P1 (1 block, d 2) and P2 (2 blocks, d 8): emulators
fitted on Gaussian synthetic inputs, then finetuned end to end on D_boot (CE + KD). Sieve: P1 keeps
a_1 |S_0|; optionally (``phase_labels`` > 0, card step 7) the model owner buys that many labels at random
from S_1 and re-finetunes P2 on D_boot plus them; P2 keeps B.

The target's LayerNorms get public range scales calibrated on D_boot (``calibrate_norm_scales``):
CrypTen's inv_sqrt is accurate only on about [0.15, 100] and the first LayerNorm's input variance is
far below it; plaintext outputs are unchanged. The MPCFormer-like baseline is the target with 2Quad
attention and Quad GELU, distilled on D_boot with the proxies' budget; it selects in one phase. The
target, P1, P2, the MPCFormer-like proxy and an entropy-only floor (no model) are each run under real
2-party MPC (two gloo processes on loopback, CrypTen) on one batch of ``mpc_examples`` pool items, and
one batched secure comparison of the pool's entropies with a pivot is timed the same way. Batch 32:
CrypTen's rounds are per batch, so a batch of 1-8 mostly measures per-round latency that a real sieve
amortises over its batches; 32 is the largest batch whose target run fits the smoke/small budgets (``full``
uses 128, the batch benchmarks/bench_mpc_selection.py measured amortising rounds).

Selection delays are *modelled* (``honed.private.mpc_cost``): each phase scores its inputs in MPC
batches - measured rounds and bytes on an assumed link (``rtt_ms``, ``bandwidth_gbit``, LAN defaults)
plus the parties' measured CPU seconds - one after the other, or pipelined on compute and network (MPS,
card step 9), then runs a QuickSelect top-k costed with the measured comparison. Direct MPC = the
target over the whole pool, keeping B (the Oracle's choice). The selection itself is computed in
plaintext with the same code (the plaintext top-k stand-in; the MPC outputs match it within fixed-point
error, which is measured). Each selection is scored by the per-image test outcomes of the target
finetuned identically on D_boot U selected (bought phase labels are not added).

The setting: Oracle (top-B plaintext entropy of the target) must beat Random by more than its interval
for the accuracy claims to mean anything (a precondition). :func:`validation_oracle_gap` measures that
gap on a validation split held out of the training split (never the test split); run it with
``python -m honed.experiments.e01_mpc_data_selection``. A design exploration with it (budgets 30-200,
pools 600-700, imbalance 0.05-0.2, 3-6 D_boot images per class, no duplicates, a target pretrained on
300 more images) found no setting where Oracle beat Random beyond seed noise, so ``small`` keeps the
card's pool and budget with 5 seeds and reports the accuracy claims inconclusive when the precondition
does not hold; no longer run is known to show the effect at this scale.
"""
import copy
from dataclasses import dataclass, replace

import torch

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import (Claim, Experiment, Invariant, Precondition, SeedOutput, arms_above_chance,
                                   register_experiment)
from honed.core.loop import correct_per_example
from honed.data import create_dataset
from honed.experiment_parts.mpc_selection_training import (build_pool, entropy_scorer, finetune_on_selection,
                                                            fit_adam, train_target, validation_oracle_gap)
from honed.private.mpc import EntropyOnly, measure_mpc_costs
from honed.private.mpc_cost import BatchCost, NetworkModel, PivotComparison, quickselect_topk, sieve_delay
from honed.private.mpcformer import make_mpcformer_proxy
from honed.private.proxy_selection import (calibrate_norm_scales, check_pool, entropy_from_logits,
                                           fit_emulators, image_tokens, make_proxy, multiphase_select,
                                           phase_sizes, secure_topk_standin)

ARMS = ("selectformer", "proxy_1phase", "mpcformer", "oracle", "random")


@dataclass(frozen=True)
class MPCSelectionConfig(ExperimentConfig):
    """SelectFormer (arXiv:2310.02373) experiment settings. Presets: ``smoke`` (plumbing), ``small`` (the
    defaults: a 4-block, 16-token target, MPC batch 32) and ``full`` (a 12-block target, see :meth:`full`);
    all share the pool, budget, proxies and claims."""

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
    rtt_ms: float = 1.0  # (R) modelled link between the parties: round-trip time (LAN)
    bandwidth_gbit: float = 1.0  # (R) modelled link bandwidth (LAN)
    quad_shift: float = 5.0  # MPCFormer's 2Quad constant c
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    threads: int = 1

    @classmethod
    def smoke(cls):
        return replace(cls(), pool_size=200, budget=40, pretrain_epochs=10, adapt_epochs=5, proxy_epochs=5,
                       finetune_epochs=8, emulator_steps=40, mpc_examples=8, seeds=(0,))

    @classmethod
    def full(cls):
        """The paper's depth: a 12-block target (BERT/ViT-base; digits keep 16 tokens), the card's proxies
        (P1 = 1 block d 2, P2 = 2 blocks d 8) and MPC batch 128; everything else as ``small``.

        Why: at small's 4x16 target and batch 32 the secret-shared entropy + top-k alone caps direct / sieve
        below the card's 10x (benchmarks/results/mpc_selection_4x16.json); the benchmark measured 12x16 above
        it at batch 32 and 128 (mpc_selection_12x16.json, mpc_selection_12x16_b128.json; random weights, the
        cost depends on shapes only). The 12-block target pretrains on the val split with small's epochs (a
        check on seeds 0-1: it fits the pretraining split, its accuracy on the pool after adaptation is a few
        points below the 4-block target's, and every LayerNorm range calibrates inside CrypTen's inv_sqrt range).

        Measured cost (2026-12-06, 2 cores, load ~1-2, nothing else running): 381 s of seed time for the 5
        seeds, 6 min 25 s wall with the report (the estimate this docstring gave before the first run was
        26-32 min at load ~5, scaled from small's parts).
        """
        return replace(cls(), target_blocks=12, proxy_blocks=(1, 2), proxy_widths=(2, 8), mpc_examples=128)

    def validate(self):
        if not 1 <= self.budget < self.pool_size:
            raise ConfigError(f"budget must be in [1, pool_size), got {self.budget} for pool {self.pool_size}")
        if not 0 < self.selectivity <= 1 or self.mpc_examples < 1 or not 0 <= self.duplicate_fraction < 1:
            raise ConfigError("selectivity must be in (0, 1], mpc_examples >= 1, duplicate_fraction in [0, 1)")
        if not (self.rtt_ms >= 0 and self.bandwidth_gbit > 0 and self.quad_shift > 0):
            raise ConfigError("need rtt_ms >= 0, bandwidth_gbit > 0 and quad_shift > 0")
        if len(self.proxy_blocks) != 2 or len(self.proxy_widths) != 2:
            raise ConfigError(f"need 2 proxies (proxy_blocks, proxy_widths), got {self.proxy_blocks}, "
                              f"{self.proxy_widths}")
        if not all(1 <= b < self.target_blocks for b in self.proxy_blocks):
            raise ConfigError(f"proxy_blocks {self.proxy_blocks} must be in [1, target_blocks - 1] (card step 3: "
                              f"L_i < L = {self.target_blocks})")
        if not 0 <= self.phase_labels <= round(self.pool_size * self.selectivity):
            raise ConfigError(f"phase_labels must be in [0, |S_1| = {round(self.pool_size * self.selectivity)}], "
                              f"got {self.phase_labels}")


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
    baselines = ("oracle", "random", "proxy_1phase", "mpcformer")
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
                     "target deepened to target_blocks = 4 in small, 12 in full (card: 2) so both proxies are strictly "
                     "shallower (step 3)",
                     "public LayerNorm range scales of the target calibrated on D_boot (CrypTen inv_sqrt range)",
                     "the secret-shared entropy floors the max-shifted logits at -2 precision_bits ln 2 "
                     "(secure_logit_floor: CrypTen's exp wraps below -256; one extra secret-shared ReLU)",
                     "the selection runs the plaintext top-k stand-in (secure_topk_standin); its MPC cost is modelled "
                     "as a QuickSelect whose partition steps are batched CrypTen comparisons with a pivot (measured "
                     "per run) that reveal their bits - cheaper than an oblivious top-k revealing only membership",
                     "delays are modelled: measured CrypTen rounds / bytes / local compute on an assumed link "
                     "(rtt_ms, bandwidth_gbit: LAN defaults); MPS = a two-resource (compute, network) pipeline "
                     "over the MPC batches of each phase",
                     "MPCFormer-like baseline: the target with 2Quad attention and Quad GELU, distilled on D_boot "
                     "with the proxies' CE + KD budget (MPCFormer distils layer-wise; logits KD only here)")
    claims_tested = ("modelled selection delay >= 10x lower than direct MPC evaluation of the target",
                     "MPS cuts the modelled delay by >= 30%",
                     "accuracy after training on the selection within 1 point of Oracle",
                     "SelectFormer above Random", "SelectFormer above the MPCFormer-like proxy, at lower delay")

    def run_seed(self, cfg, seed, ctx) -> SeedOutput:
        torch.manual_seed(seed)
        data = create_dataset("digits", flat=True)
        (bx, by), (px, py) = build_pool(data.train, cfg, seed)
        check_pool(px, py)
        target = train_target(cfg, seed, data.val, (bx, by))
        calibration = calibrate_norm_scales(target, bx)  # model owner's own data; plaintext unchanged
        proxies = [self._proxy(cfg, target, bx, by, blocks, width, seed + 10 * k)
                   for k, (blocks, width) in enumerate(zip(cfg.proxy_blocks, cfg.proxy_widths))]
        mpcformer = fit_adam(make_mpcformer_proxy(target, cfg.quad_shift), bx, by, cfg.proxy_epochs, cfg.lr, seed + 30,
                         teacher=target, kd_weight=cfg.kd_weight).eval()  # same distillation budget as the proxies
        picks, sizes, p2 = self._select(cfg, seed, target, proxies, (bx, by), (px, py))
        scorers = {"target": target, "p1": proxies[0], "p2": p2, "mpcformer": mpcformer}
        picks["mpcformer"] = multiphase_select(px, [entropy_scorer(mpcformer)], [cfg.budget])[0]
        mpc = measure_mpc_costs({**scorers, "entropy_only": EntropyOnly(target.classes)},
                                image_tokens(px[:cfg.mpc_examples]))
        with torch.no_grad():
            entropies = {name: entropy_from_logits(m(px)) for name, m in scorers.items()}
        comparison = measure_mpc_costs({"comparison": PivotComparison()}, entropies["target"].view(-1, 1),
                                       reveal="logits")["comparison"]
        arms = self._arms(cfg, seed, target, picks, (bx, by), (px, py), data.test)
        self._add_delays(cfg, seed, arms, mpc, comparison, entropies, picks, sizes)
        errs = {f"{k}_mpc_entropy_abs_error": float((mpc[k]["output"] - entropies[k][:cfg.mpc_examples]).abs().max())
                for k in scorers}
        gen = torch.Generator().manual_seed(seed)
        topk_agrees = all(torch.equal(quickselect_topk(entropies[k], cfg.budget, gen)[0],
                                      secure_topk_standin(entropies[k], cfg.budget)) for k in ("target", "mpcformer"))
        extra = {"mpc_entropy_max_abs_error": max(errs.values()), **errs, "phase_sizes": sizes,
                 "target_norm_calibration": calibration, "quickselect_matches_standin": float(topk_agrees),
                 "target_norm_all_in_range": float(all(c["fits"] for c in calibration.values())),
                 **{f"{k}_{m}": float(v[m]) for k, v in {**mpc, "comparison": comparison}.items()
                    for m in ("seconds_per_example", "cpu_seconds_per_example", "bytes_per_example",
                              "rounds_per_batch")}}
        return SeedOutput(arms=arms, extra=extra)

    def _select(self, cfg, seed, target, proxies, boot, pool):
        """Oracle, Random, 1-phase and SelectFormer picks; phase 2 after optional bought labels (step 7)."""
        px, py = pool
        scorer = entropy_scorer
        sizes = phase_sizes(len(px), cfg.budget, [cfg.selectivity])
        with torch.no_grad():
            oracle_scores = entropy_from_logits(target(px))
        s1 = multiphase_select(px, [scorer(proxies[0])], sizes[:1])[0]
        p2 = proxies[1]
        if cfg.phase_labels > 0:  # the DO releases labels of a random sample of S_1 (only membership is known)
            draw = torch.randperm(len(s1), generator=torch.Generator().manual_seed(seed + 5))  # CPU: same draw anywhere
            bought = s1[draw[:cfg.phase_labels].to(s1.device)]
            p2 = copy.deepcopy(p2).train()
            fit_adam(p2, torch.cat([boot[0], px[bought]]), torch.cat([boot[1], py[bought]]), cfg.proxy_epochs, cfg.lr,
                 seed + 20, teacher=target, kd_weight=cfg.kd_weight)
            p2.eval()
        picks = {"oracle": secure_topk_standin(oracle_scores, cfg.budget),
                 "random": torch.randperm(len(px), generator=torch.Generator().manual_seed(seed))[:cfg.budget]
                 .to(px.device),
                 "proxy_1phase": multiphase_select(px, [scorer(proxies[0])], [cfg.budget])[0],
                 "selectformer": s1[multiphase_select(px[s1], [scorer(p2)], sizes[1:])[0]]}
        return picks, sizes, p2

    def _proxy(self, cfg, target, bx, by, blocks, width, seed):
        proxy = make_proxy(target, blocks, width, fuse_ffn=cfg.fuse_ffn)
        fit_emulators(proxy, target, bx, synthetic_factor=cfg.synthetic_factor, steps=cfg.emulator_steps, seed=seed)
        fit_adam(proxy, bx, by, cfg.proxy_epochs, cfg.lr, seed, teacher=target, kd_weight=cfg.kd_weight)
        return proxy.eval()

    def _arms(self, cfg, seed, target, picks, boot, pool, test):
        """Finetune the target identically on D_boot + each arm's picks; per-image test outcomes."""
        arms, oracle = {}, set(picks["oracle"].tolist())
        for arm in ARMS:
            idx = picks[arm]
            model = finetune_on_selection(cfg, seed, target, boot, pool, idx)
            arms[arm] = {"test_acc": correct_per_example(model, test.x, test.y),  # paired intervals
                         "oracle_recall": len(oracle & set(idx.tolist())) / cfg.budget,
                         "classes_selected": float(len(torch.unique(pool[1][idx])))}
        return arms

    def _add_delays(self, cfg, seed, arms, mpc, comparison, entropies, picks, sizes):
        """Modelled selection delay of each MPC selection (direct MPC = the Oracle's choice), from the
        measured batch costs, the QuickSelect top-k costed by the measured comparison, and the network."""
        costs = {k: BatchCost.from_measure(v, cfg.mpc_examples) for k, v in mpc.items()}
        cmp_cost = BatchCost.from_measure(comparison, len(entropies["target"]))
        net = NetworkModel(cfg.rtt_ms / 1e3, cfg.bandwidth_gbit * 1e9 / 8)
        s1 = secure_topk_standin(entropies["p1"], sizes[0])  # phase 1 survivors, as multiphase_select keeps
        plans = {"oracle": [(entropies["target"], "target", cfg.budget)],
                 "selectformer": [(entropies["p1"], "p1", sizes[0]), (entropies["p2"][s1], "p2", cfg.budget)],
                 "proxy_1phase": [(entropies["p1"], "p1", cfg.budget)],
                 "mpcformer": [(entropies["mpcformer"], "mpcformer", cfg.budget)]}
        floor = [(scores, "entropy_only", keep) for scores, _, keep in plans["selectformer"]]  # free proxies
        arms["selectformer"]["entropy_floor_delay_s"] = sieve_delay(
            floor, costs, cmp_cost, net, torch.Generator().manual_seed(seed + 40))["sequential"]
        for arm, phases in plans.items():
            delay = sieve_delay(phases, costs, cmp_cost, net, torch.Generator().manual_seed(seed + 40))
            arms[arm] |= {"selection_delay_s": delay["sequential"], "selection_delay_mps_s": delay["mps"],
                          "topk_delay_s": delay["topk"],
                          "selection_bytes": sum(len(sc) * mpc[name]["bytes_per_example"] for sc, name, _ in phases)}

    def claims(self, cfg, result):
        m = result.metric
        acc = lambda arm: m(arm, "test_acc")  # noqa: E731
        delay = lambda arm, key="selection_delay_s": m(arm, key)  # noqa: E731
        modelled = (f"modelled: measured CrypTen rounds, bytes and local compute on a {cfg.rtt_ms:g} ms RTT, "
                    f"{cfg.bandwidth_gbit:g} Gbit/s link (R), secure top-k costed as QuickSelect")
        separable = ("oracle above random",) + tuple(f"{a} above chance" for a in ARMS)
        return [
            Claim.check("modelled selection delay direct MPC / selectformer", delay("oracle") / delay("selectformer"),
                        ">=", 10.0, f"~200x lower delay than direct MPC (reviewers); card target >= 10x; {modelled}",
                        metric="selection_delay_s", requires=()),
            Claim.check("modelled MPS delay reduction of the selectformer sieve",
                        1 - delay("selectformer", "selection_delay_mps_s") / delay("selectformer"), ">=", 0.30,
                        f"MPS alone cuts delay by 33-61% (paper); card: 30-60%; {modelled}",
                        metric="selection_delay_mps_s", requires=()),
            Claim.check("oracle - selectformer test acc", acc("oracle") - acc("selectformer"), "<=", 0.01,
                        "~0.20% accuracy loss vs Oracle (paper); card: within 1 pt of Oracle", metric="test_acc",
                        requires=separable),
            Claim.check("selectformer - random test acc", acc("selectformer") - acc("random"), ">", 0.0,
                        "clearly better than Random selection (paper; card: above Random)", metric="test_acc",
                        requires=separable),
            Claim.check("selectformer - mpcformer test acc", acc("selectformer") - acc("mpcformer"), ">", 0.0,
                        "clearly better than MPCFormer-style proxies (paper)", metric="test_acc", requires=separable),
            Claim.check("modelled selection delay mpcformer / selectformer", delay("mpcformer") / delay("selectformer"),
                        ">", 1.0, f"MPCFormer-style proxies cost more delay than SelectFormer's sieve; {modelled}",
                        metric="selection_delay_s", requires=()),
        ]

    def preconditions(self, cfg, result):
        m = result.metric
        return arms_above_chance(result, ARMS, "test_acc", 0.1, 0.3) + [Precondition.check(
            "oracle above random", m("oracle", "test_acc") - m("random", "test_acc"), ">", 0.0,
            "selection can matter only where the Oracle's choice beats a random one by more than the interval; "
            "otherwise 'within 1 pt of Oracle' and 'above Random' compare noise (card: the comparison is void)")]

    def invariants(self, cfg, result):
        e = lambda k: result.extra[k]["mean"]  # noqa: E731
        drift = max(abs(v[-1] - cfg.budget) for v in result.extra["phase_sizes"]["values"])
        return [Invariant.check("|last phase size - B| (worst seed)", drift, "<=", 0,
                                "phase_sizes ends at the budget by construction (no rounding drift)"),
                Invariant.check("QuickSelect picks = plaintext stand-in picks (share of seeds)",
                                e("quickselect_matches_standin"), ">=", 1.0,
                                "the costed QuickSelect selects exactly the stand-in's top-B (distinct scores)"),
                Invariant.check("max |MPC entropy - plaintext entropy| (nats)", e("mpc_entropy_max_abs_error"), "<",
                                0.05, "CrypTen's fixed point with calibrated LayerNorm ranges: the MPC scores match "
                                "the plaintext ones the selection uses")]

    def notes(self, cfg, result):
        m = lambda a, k: result.mean(a, k)  # noqa: E731
        e = lambda k: result.extra[k]["mean"]  # noqa: E731
        models = ("target", "p1", "p2", "mpcformer", "entropy_only")
        per = ", ".join(f"{k} {e(k + '_seconds_per_example'):.4f} s (CPU {e(k + '_cpu_seconds_per_example'):.4f} s) "
                        f"/ {e(k + '_bytes_per_example') / 1e3:.0f} kB / "
                        f"{e(k + '_rounds_per_batch'):.0f} rounds" for k in models)
        arms = ("oracle", "selectformer", "proxy_1phase", "mpcformer")
        delays = ", ".join(f"{'direct MPC' if a == 'oracle' else a} {m(a, 'selection_delay_s'):.1f} s (MPS "
                           f"{m(a, 'selection_delay_mps_s'):.1f} s, of which top-k {m(a, 'topk_delay_s'):.2f} s)"
                           for a in arms)
        notes = [f"measured MPC per example at batch {cfg.mpc_examples} (2 parties, loopback; wall seconds with party "
                 f"0's CPU seconds, the modelled local compute / bytes sent / rounds per batch): {per}; one batched "
                 f"secure comparison of the {cfg.pool_size} pool entropies: {e('comparison_rounds_per_batch'):.0f} "
                 f"rounds, {e('comparison_bytes_per_example'):.0f} B per element",
                 f"modelled selection delay ({cfg.rtt_ms:g} ms RTT, {cfg.bandwidth_gbit:g} Gbit/s): {delays}",
                 "bytes sent scoring the pool: direct / selectformer "
                 f"{m('oracle', 'selection_bytes') / m('selectformer', 'selection_bytes'):.1f}x; the secret-shared "
                 "entropy and top-k alone (free proxies) would take "
                 f"{m('selectformer', 'entropy_floor_delay_s'):.1f} s on the sieve, so no proxy could beat "
                 f"{m('oracle', 'selection_delay_s') / m('selectformer', 'entropy_floor_delay_s'):.1f}x here (a "
                 f"{cfg.target_blocks}-block, 16-token target; the paper's ~200x is for 12-block, long-sequence "
                 "models whose forward dwarfs the entropy)",
                 "MPC vs plaintext entropy max abs error (nats): " + ", ".join(
                     f"{k} {e(k + '_mpc_entropy_abs_error'):.4f}" for k in models[:4])
                 + f"; target LayerNorm scales put every recorded D_boot variance range inside CrypTen's inv_sqrt "
                 f"range in {e('target_norm_all_in_range'):.0%} of seeds",
                 "test acc: " + ", ".join(f"{a} {m(a, 'test_acc'):.4f}" for a in ARMS)
                 + f"; oracle recall of selectformer {m('selectformer', 'oracle_recall'):.2f}, of mpcformer "
                 f"{m('mpcformer', 'oracle_recall'):.2f}"]
        gap = m("oracle", "test_acc") - m("random", "test_acc")
        if gap <= 0:
            notes.append(f"Oracle is not above Random here (gap {gap:+.4f}): the accuracy comparison is void")
        return notes


if __name__ == "__main__":  # the Oracle - Random gap of the small preset's setting, on validation data
    torch.set_num_threads(1)
    print(validation_oracle_gap(MPCSelectionConfig()))
