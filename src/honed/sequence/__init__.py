"""Sparse coding, sequence and motion components."""
