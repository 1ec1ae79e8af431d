"""Adversarial attacks with one call shape, ``Attack(model, **hp)(x, y) -> x_adv`` (torchattacks').

x is float (N, ...) in [0, 1] (normalisation lives inside the model), y int64 (N,) - true labels, or
targets with ``targeted=True``. After a call, ``attack.last_stats`` holds the forward/backward passes,
iterations, time and the per-example success re-checked on the returned images.
"""
from honed.robust.attacks.base import Attack, AttackStats, eval_mode, is_adversarial
from honed.robust.attacks.cw import CW, margin_loss, update_search_bounds
from honed.robust.attacks.gradient import DIFGSM, FGSM, IFGSM, MIFGSM, PGD, PGDL2, project_l2, project_linf
from honed.robust.attacks.guided_cw import GuidedCW

__all__ = ["Attack", "AttackStats", "CW", "DIFGSM", "FGSM", "GuidedCW", "IFGSM", "MIFGSM", "PGD", "PGDL2",
           "eval_mode", "is_adversarial", "margin_loss", "project_l2", "project_linf", "update_search_bounds"]
