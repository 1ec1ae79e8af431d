"""Adversarial attacks with one call shape, ``Attack(model, **hp)(x, y) -> x_adv`` (torchattacks').

x is float (N, ...) in [0, 1] (normalisation lives inside the model), y int64 (N,) - true labels, or
targets with ``targeted=True``. After a call, ``attack.last_stats`` holds the forward/backward passes,
iterations, time and the per-example success re-checked on the returned images.

Why not torchattacks itself (the ``peers`` extra, kept as the call-shape reference and a test oracle):
its random starts draw from the global RNG (no ``torch.Generator``, so a run cannot be replayed per
seed), it counts no forward/backward passes (the query budgets of cards 29 and 32 need them), and its CW
has no binary search over c (its own docstring says so), which the CW-based reproductions need.
"""
from honed.robust.attacks.base import Attack, AttackStats, eval_mode, is_adversarial
from honed.robust.attacks.cw import CW, margin_loss, update_search_bounds
from honed.robust.attacks.gradient import DIFGSM, FGSM, IFGSM, MIFGSM, PGD, PGDL2, project_l2, project_linf
from honed.robust.attacks.guided_cw import GuidedCW

__all__ = ["Attack", "AttackStats", "CW", "DIFGSM", "FGSM", "GuidedCW", "IFGSM", "MIFGSM", "PGD", "PGDL2",
           "eval_mode", "is_adversarial", "margin_loss", "project_l2", "project_linf", "update_search_bounds"]
