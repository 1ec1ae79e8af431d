"""Pieces of single experiments that outgrew their module (arms, training helpers), one module per
experiment, named by its slug. They register nothing: the experiments in :mod:`honed.experiments`
import them. Code that two experiments need belongs in a component package or :mod:`honed.core`."""
