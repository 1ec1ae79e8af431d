"""Seeded synthetic wearable-IMU windows with long-tailed activity frequencies, standing in for the
A*HAR data set (Narasimman et al., "A*HAR: A New Benchmark towards Semi-supervised learning for
Class-imbalanced Human Activity Recognition", arXiv:2101.04859), whose HAR_DATA.npz is not public.

Each window is 9 channels (3-axis accelerometer, gyroscope, magnetometer) x 64 steps at 50 Hz.
An activity class fixes (from ``class_seed``): a posture (gravity direction and heading, which set
the accelerometer / magnetometer offsets), a step cadence in Hz (0 for static postures), per-channel
amplitudes and phases of the fundamental and 2nd harmonic, and a rate and size of transient bursts.
Classes come in confusable pairs that share a posture or a cadence. A subject (train and test
subjects are disjoint) scales each channel's gain, shifts phases and cadence and sets the sensor
noise. Class frequencies are Zipf p_k ~ (k+1)^-s with s chosen so that max/min = ``imbalance``;
class 0 is the most frequent. The test set is drawn from the same long-tailed prior by default
(``balanced_test=True`` gives equal counts per class instead). numpy only, then torch tensors.
"""
from dataclasses import dataclass

import numpy as np
import torch

from honed.core.errors import InputError, check_count, check_number

CHANNELS, STEPS, RATE_HZ = 9, 64, 50.0


@dataclass
class HARWindows:
    """Synthetic A*HAR-like data (arXiv:2101.04859): x float32 (N, 9, 64); y int64 (N,) in [0, K);
    subject int64 (N,). ``class_counts`` (K,) are the train counts (long-tailed, class 0 largest)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_subject: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_subject: torch.Tensor
    num_classes: int
    class_counts: torch.Tensor


def zipf_counts(total: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Counts (K,) summing to ``total`` with p_k ~ (k+1)^-s, s = log(imbalance)/log(K), so that
    count_0 / count_{K-1} ~= imbalance (exact up to rounding)."""
    s = np.log(imbalance) / np.log(num_classes)
    p = (np.arange(1, num_classes + 1) ** -s)
    counts = np.floor(total * p / p.sum()).astype(int)
    counts[0] += total - counts.sum()
    return counts


def _class_params(num_classes: int, class_seed: int) -> list[dict]:
    """Per-class generative parameters; class 2j and 2j+1 share a posture (even j) or a cadence."""
    rng = np.random.default_rng(class_seed)
    params = []
    for k in range(num_classes):
        if k % 2 == 0 or (k // 2) % 2 == 1:
            gravity = rng.normal(size=3)
            gravity /= np.linalg.norm(gravity)
            heading = rng.uniform(0, 2 * np.pi)
        if k % 2 == 0 or (k // 2) % 2 == 0:
            cadence = 0.0 if rng.random() < 0.2 else rng.uniform(0.6, 2.8)
        params.append(dict(
            gravity=gravity.copy(), heading=heading, cadence=cadence,
            amp1=rng.uniform(0.05, 0.8, CHANNELS), amp2=rng.uniform(0.0, 0.4, CHANNELS),
            phase1=rng.uniform(0, 2 * np.pi, CHANNELS), phase2=rng.uniform(0, 2 * np.pi, CHANNELS),
            burst_rate=rng.uniform(0.0, 1.5), burst_amp=rng.uniform(0.3, 1.5)))
    return params


def _subject_params(n_subjects: int, rng: np.random.Generator, noise: float) -> list[dict]:
    return [dict(gain=np.exp(rng.normal(0, 0.15, CHANNELS)), phase=rng.normal(0, 0.4, CHANNELS),
                 cadence=np.exp(rng.normal(0, 0.08)), noise=noise * np.exp(rng.normal(0, 0.3)),
                 tilt=rng.normal(0, 0.15, 3))
            for _ in range(n_subjects)]


def _window(c: dict, subj: dict, rng: np.random.Generator) -> np.ndarray:
    """One (9, 64) window of class params ``c`` worn by subject ``subj``."""
    t = np.arange(STEPS) / RATE_HZ
    g = c["gravity"] + subj["tilt"]
    g = g / np.linalg.norm(g)
    h = c["heading"] + rng.normal(0, 0.2)
    mag = np.array([np.cos(h), np.sin(h), 0.5]) * 0.6
    offset = np.concatenate([g, np.zeros(3), mag])[:, None]
    f = c["cadence"] * subj["cadence"] * np.exp(rng.normal(0, 0.05))
    phi = rng.uniform(0, 2 * np.pi)
    arg = 2 * np.pi * f * t[None, :] + phi + subj["phase"][:, None]
    motion = (c["amp1"][:, None] * np.sin(arg + c["phase1"][:, None])
              + c["amp2"][:, None] * np.sin(2 * arg + c["phase2"][:, None]))
    if f == 0.0:  # static posture: slow sway only
        motion = 0.08 * c["amp1"][:, None] * np.sin(2 * np.pi * 0.3 * t[None, :] + c["phase1"][:, None] + phi)
    x = offset + subj["gain"][:, None] * motion
    for _ in range(rng.poisson(c["burst_rate"])):
        centre, width = rng.uniform(0, STEPS), rng.uniform(1.5, 4.0)
        bump = np.exp(-0.5 * ((np.arange(STEPS) - centre) / width) ** 2)
        x += c["burst_amp"] * rng.normal(0, 1, CHANNELS)[:, None] * bump[None, :]
    return x + subj["noise"] * rng.normal(size=x.shape)


def _sample(counts: np.ndarray, params: list[dict], subjects: list[dict], subject_ids: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(y)
    subj = rng.choice(subject_ids, size=len(y))
    x = np.stack([_window(params[k], subjects[s], rng) for k, s in zip(y, subj)]).astype(np.float32)
    return x, y, subj


def make_synthetic_har(n_train: int = 6000, n_test: int = 2000, num_classes: int = 10,
                       imbalance: float = 20.0, n_subjects: int = 30, test_subjects: int = 8,
                       noise: float = 0.15, seed: int = 0, class_seed: int = 0,
                       balanced_test: bool = False, device: str | torch.device | None = None) -> HARWindows:
    """Synthetic long-tailed IMU windows (A*HAR stand-in, arXiv:2101.04859). ``num_classes`` in
    [2, 24]; ``imbalance`` >= 1 is the train max/min class-count ratio; subjects [0, n_subjects -
    test_subjects) are train subjects, the rest test subjects. Same arguments -> identical tensors."""
    check_count(num_classes, "num_classes", 2)
    if num_classes > 24:
        raise InputError(f"num_classes must be <= 24, got {num_classes}")
    check_number(imbalance, "imbalance", minimum=1.0)
    check_number(noise, "noise")
    check_count(n_test, "n_test")
    if test_subjects < 1 or test_subjects >= n_subjects:
        raise InputError(f"test_subjects must lie in [1, n_subjects), got {test_subjects} of {n_subjects}")
    counts = zipf_counts(n_train, num_classes, imbalance)
    if counts.min() < 1:
        raise InputError(f"n_train={n_train} too small for {num_classes} classes at imbalance {imbalance}")
    rng = np.random.default_rng(seed)
    params = _class_params(num_classes, class_seed)
    subjects = _subject_params(n_subjects, rng, noise)
    train_ids = np.arange(n_subjects - test_subjects)
    test_ids = np.arange(n_subjects - test_subjects, n_subjects)
    test_counts = (np.full(num_classes, n_test // num_classes) if balanced_test
                   else zipf_counts(n_test, num_classes, imbalance))
    tr = _sample(counts, params, subjects, train_ids, rng)
    te = _sample(test_counts, params, subjects, test_ids, rng)
    as_t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return HARWindows(as_t(tr[0], torch.float32), as_t(tr[1], torch.int64), as_t(tr[2], torch.int64),
                      as_t(te[0], torch.float32), as_t(te[1], torch.int64), as_t(te[2], torch.int64),
                      num_classes, as_t(counts, torch.int64))
