"""Robust training: MAT, multi-strength adversarial training in its mixed (one network, several
strengths per batch) and parallel (an ensemble of single-strength adversarially trained networks)
structures, with the single-strength adversarial-training baseline (arXiv:1705.09764)."""
from honed.robust.training.mat import (ATTACKS, DEFAULT_STRENGTHS, SAMPLINGS, AdversarialTraining, MixedMAT,
                                       ParallelMAT, fgsm_accuracy_curve, fgsm_attack, pgd_attack, resolve_attack,
                                       robust_accuracy)

__all__ = ["ATTACKS", "DEFAULT_STRENGTHS", "SAMPLINGS", "AdversarialTraining", "MixedMAT", "ParallelMAT",
           "fgsm_accuracy_curve", "fgsm_attack", "pgd_attack", "resolve_attack", "robust_accuracy"]
