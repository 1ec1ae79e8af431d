"""Efficient training: methods that change the training step or its cost (SmoothOut, stream filters, ...)."""
