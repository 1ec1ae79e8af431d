"""Generative-model training components."""
