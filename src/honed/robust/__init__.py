"""Robustness: adversarial attacks, robust training and certified defences (randomized smoothing)."""
