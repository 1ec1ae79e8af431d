"""31-opq experiment (OPQ, arXiv:2205.11141): which arms run where, and the card's comparisons as claims."""
from honed.experiments.e31_opq import ARMS, ONE_SHOT_ARMS, OPQConfig, arms_at


def test_iterative_baseline_runs_only_at_the_claim_point_with_its_own_budget():
    cfg = OPQConfig()
    assert arms_at(cfg, cfg.claim_sparsity, cfg.claim_bits) == ARMS
    others = [s for s in cfg.sparsities if s != cfg.claim_sparsity]
    assert others and all(arms_at(cfg, s, cfg.claim_bits) == tuple(ONE_SHOT_ARMS) for s in others)
    assert cfg.finetune_epochs * 3 <= cfg.iterative_epochs  # card: OPQ in <= 1/3 of the iterative time
