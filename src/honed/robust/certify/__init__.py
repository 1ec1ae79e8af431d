"""Certified robustness by randomized smoothing (arXiv:1902.02918): Monte-Carlo PREDICT / CERTIFY with
Clopper-Pearson bounds, plus the regularised training and tight certificate of Feng et al. (AAAI 2020)."""
from honed.robust.certify.bounds import (certified_radius, clopper_pearson_lower, clopper_pearson_upper,
                                         goodman_intervals)
from honed.robust.certify.regularizer import (SmoothingRegularizer, certify_tight, regularized_smoothing_loss,
                                              runner_up_probability, smoothed_probabilities,
                                              smoothing_regularizer, tight_certificate)
from honed.robust.certify.smoothing import ABSTAIN, Smooth, cohen_certificate, max_certifiable_radius

__all__ = ["ABSTAIN", "Smooth", "SmoothingRegularizer", "certified_radius", "certify_tight",
           "clopper_pearson_lower", "clopper_pearson_upper", "cohen_certificate", "goodman_intervals",
           "max_certifiable_radius", "regularized_smoothing_loss", "runner_up_probability",
           "smoothed_probabilities", "smoothing_regularizer", "tight_certificate"]
