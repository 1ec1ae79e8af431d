"""Compression: pruning masks, iterative magnitude pruning with rewinding (open_lth semantics), cost
columns, and the methods built on them (ticket universality, GDP, OPQ, ...).

Masks are not speed: a masked model is as fast as the dense one. Every compression experiment reports
parameters, MACs (dense and effective) and measured CPU latency at batch 1 and 64 as separate columns
(:func:`honed.compress.cost.cost_columns`) and says which one a claim is about.
"""
from honed.compress.cost import cost_columns
from honed.compress.imp import (IMPLevel, IMPResult, StepTrainer, iterative_magnitude_pruning, random_reinit,
                                reinitialize, rewind, train_ticket)
from honed.compress.masks import (Mask, MaskCallback, apply_mask, check_mask, density, is_nested,
                                  magnitude_prune, mask_gradients, ones_mask, prunable_weights,
                                  prune_by_score, random_prune, shuffle_mask, sparsity)

__all__ = [
    "IMPLevel", "IMPResult", "Mask", "MaskCallback", "StepTrainer", "apply_mask", "check_mask",
    "cost_columns", "density", "is_nested", "iterative_magnitude_pruning", "magnitude_prune",
    "mask_gradients", "ones_mask", "prunable_weights", "prune_by_score", "random_prune", "random_reinit",
    "reinitialize", "rewind", "shuffle_mask", "sparsity", "train_ticket",
]
