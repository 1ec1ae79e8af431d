"""Log-mel features and mel-cepstral distortion for the lifelong multilingual TTS reproduction (Towards
lifelong learning of multilingual text-to-speech synthesis, arXiv:2110.04482).

``log_mel`` turns a waveform (samples,) at a known sample rate into a (frames, n_mels) log-mel
spectrogram in dB (librosa; 25 ms window, 10 ms hop at 16 kHz), with leading/trailing silence trimmed,
resampled in time to a fixed number of frames. ``mel_cepstral_distortion`` compares two log-mel
spectrograms through their MFCCs (c1..c13, c0 dropped) along the DTW path. librosa is the ``speech``
extra.
"""
from dataclasses import dataclass

import numpy as np
import torch

from honed.core.errors import InputError, check_count, require_extra


@dataclass(frozen=True)
class MelSpec:
    """Feature settings: the sample rate the waveforms must have, mel bins, window and hop in samples,
    the fixed number of output frames and the trimming threshold (dB below peak)."""

    sample_rate: int = 16000
    n_mels: int = 40
    n_fft: int = 400
    hop: int = 160
    frames: int = 48
    top_db: float = 30.0


def log_mel(wave: np.ndarray, sample_rate: int, spec: MelSpec = MelSpec()) -> np.ndarray:
    """(spec.frames, spec.n_mels) float32 log-mel (dB) of a mono waveform (samples,) in [-1, 1] at
    ``sample_rate``, which must equal ``spec.sample_rate``. Silence beyond ``top_db`` below the peak is
    trimmed from both ends, then the frames are linearly resampled to ``spec.frames``."""
    librosa = require_extra("librosa", "speech")
    if sample_rate != spec.sample_rate:
        raise InputError(f"waveform sample rate is {sample_rate} Hz; these features expect {spec.sample_rate} Hz "
                         f"(resample it first)")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size < spec.n_fft:
        raise InputError(f"wave must be mono (samples,) with at least {spec.n_fft} samples, got shape {wave.shape}")
    if not np.isfinite(wave).all() or np.abs(wave).max() == 0:
        raise InputError("wave must be finite and not silent")
    trimmed, _ = librosa.effects.trim(wave, top_db=spec.top_db, frame_length=spec.n_fft, hop_length=spec.hop)
    if trimmed.size < spec.n_fft:
        trimmed = wave
    mel = librosa.feature.melspectrogram(y=trimmed, sr=sample_rate, n_fft=spec.n_fft, hop_length=spec.hop,
                                         n_mels=spec.n_mels)
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10).T  # (frames, n_mels)
    return resample_frames(db, spec.frames)


def resample_frames(features: np.ndarray, frames: int) -> np.ndarray:
    """(T, D) -> (frames, D) by linear interpolation along time (endpoints kept)."""
    check_count(frames, "frames", minimum=2)
    source = np.linspace(0, 1, features.shape[0])
    target = np.linspace(0, 1, frames)
    return np.stack([np.interp(target, source, features[:, d]) for d in range(features.shape[1])], 1).astype(np.float32)


@dataclass(frozen=True)
class MelNormalizer:
    """One fixed per-bin standardisation of log-mels (mean and std over every frame of a reference set,
    e.g. the training data of all languages), so distances stay comparable across tasks."""

    mean: torch.Tensor  # (n_mels,)
    std: torch.Tensor

    @classmethod
    def fit(cls, mels: torch.Tensor) -> "MelNormalizer":
        """Statistics of ``mels`` (N, frames, n_mels)."""
        if mels.dim() != 3 or len(mels) == 0:
            raise InputError(f"mels must be (N, frames, n_mels) with N >= 1, got {tuple(mels.shape)}")
        flat = mels.reshape(-1, mels.shape[-1])
        return cls(flat.mean(0), flat.std(0).clamp_min(1e-3))

    def __call__(self, mels: torch.Tensor) -> torch.Tensor:
        return (mels - self.mean.to(mels.device)) / self.std.to(mels.device)

    def invert(self, normalised: torch.Tensor) -> torch.Tensor:
        return normalised * self.std.to(normalised.device) + self.mean.to(normalised.device)


def mfcc_from_log_mel(log_mel_db: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """(frames, n_mfcc) MFCCs c1..c_n (c0, the energy, dropped) of a (frames, n_mels) log-mel in dB."""
    librosa = require_extra("librosa", "speech")
    return librosa.feature.mfcc(S=np.asarray(log_mel_db, dtype=np.float64).T, n_mfcc=n_mfcc + 1)[1:].T


def mel_cepstral_distortion(generated_db: np.ndarray, reference_db: np.ndarray, n_mfcc: int = 13) -> float:
    """Card metric: MFCCs c1..c13 of both log-mels (frames, n_mels) in dB, aligned by DTW (librosa,
    Euclidean cost); the mean over the path of the frame distance sqrt(sum_d (c_d - c'_d)^2). 0 for
    identical inputs; symmetric in its arguments."""
    librosa = require_extra("librosa", "speech")
    for name, x in (("generated_db", generated_db), ("reference_db", reference_db)):
        if np.ndim(x) != 2 or len(x) < 1 or not np.isfinite(x).all():
            raise InputError(f"{name} must be a finite (frames, n_mels) array, got shape {np.shape(x)}")
    if np.shape(generated_db)[1] != np.shape(reference_db)[1]:
        raise InputError(f"mel bins differ: {np.shape(generated_db)} vs {np.shape(reference_db)}")
    a, b = mfcc_from_log_mel(generated_db, n_mfcc), mfcc_from_log_mel(reference_db, n_mfcc)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    _, path = librosa.sequence.dtw(C=cost)
    return float(cost[path[:, 0], path[:, 1]].mean())
