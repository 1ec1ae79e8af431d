"""Speech synthesised offline by espeak-ng, for the lifelong multilingual TTS reproduction (Towards
lifelong learning of multilingual text-to-speech synthesis, arXiv:2110.04482, card "Reproduction at small
scale").

Texts are pseudo-words drawn from one shared Latin alphabet (consonant-vowel syllables), so every
language reads the same kind of text and differs only in how it pronounces it. espeak-ng (a Debian
package, not a pip one: ``apt-get install -y espeak-ng``) synthesises each at 22.05 kHz; the waveform is
resampled to ``sample_rate`` (scipy's polyphase filter) and returned as float32 in [-1, 1].
"""
import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch

from honed.core.errors import InputError, MissingExtraError, check_count, require_extra

ESPEAK_INSTALL = "apt-get install -y espeak-ng"
ESPEAK_RATE = 22050
ONSETS = ("b", "d", "f", "g", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sch", "gn", "qu")
VOWELS = ("a", "e", "i", "o", "u", "ei", "ie", "ou")
CODAS = ("", "", "", "n", "s", "r", "l")
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def espeak_binary() -> str:
    """Path of the espeak-ng program, or MissingExtraError naming the command that installs it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise MissingExtraError(f"espeak-ng is not installed (it synthesises the speech corpus offline); "
                                f"install it with: {ESPEAK_INSTALL}  (as root; `make install` does it where it can)")
    return path


def pseudo_words(count: int, seed: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
    """``count`` distinct lower-case pseudo-words of ``syllables`` (inclusive range) onset-vowel(-coda)
    syllables from the shared alphabet, drawn from ``seed``."""
    check_count(count, "count")
    rng = np.random.default_rng(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        parts = [str(rng.choice(ONSETS)) + str(rng.choice(VOWELS)) + str(rng.choice(CODAS))
                 for _ in range(int(rng.integers(syllables[0], syllables[1] + 1)))]
        word = "".join(parts)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"text must be a non-empty string, got {text!r}")
    if text.lstrip().startswith("-"):
        raise InputError(f"text must not start with '-' (espeak-ng would read it as an option): {text!r}")
    return text.strip()


def synthesize(text: str, language: str, sample_rate: int = 16000, speaker: str = "") -> np.ndarray:
    """Waveform (samples,) float32 in [-1, 1] at ``sample_rate`` of espeak-ng reading ``text`` with the
    voice of ``language`` (an espeak-ng voice name such as "de", "nl", "es", "it") and the voice variant
    ``speaker`` (e.g. "m3", "f2"; "" = the language's default voice)."""
    text = _check_text(text)
    check_count(sample_rate, "sample_rate", minimum=1000)
    if not isinstance(speaker, str) or not (speaker == "" or speaker.isalnum()):
        raise InputError(f"speaker must be an espeak-ng variant name such as 'm3' or '', got {speaker!r}")
    soundfile = require_extra("soundfile", "speech")
    voice = f"{language}+{speaker}" if speaker else language
    proc = subprocess.run([espeak_binary(), "-v", voice, "--stdout", text], capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        raise InputError(f"espeak-ng could not read {text!r} with voice {voice!r}: "
                         f"{proc.stderr.decode(errors='replace').strip() or 'no audio'}")
    wave, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="float32")
    if rate != sample_rate:
        from scipy.signal import resample_poly

        ratio = Fraction(sample_rate, rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.clip(wave, -1, 1)


@dataclass(frozen=True)
class LanguageSpeech:
    """One language's texts and their waveforms (float32 at ``sample_rate``): train, validation and test."""

    language: str
    train_texts: tuple[str, ...]
    train_waves: tuple[np.ndarray, ...]
    val_texts: tuple[str, ...]
    val_waves: tuple[np.ndarray, ...]
    sample_rate: int
    test_texts: tuple[str, ...] = ()
    test_waves: tuple[np.ndarray, ...] = ()


@lru_cache(maxsize=4)
def espeak_corpus(languages: tuple[str, ...], n_train: int, n_val: int, seed: int = 0,
                  sample_rate: int = 16000, workers: int = 4,
                  speakers: tuple[str, ...] | None = None, n_test: int = 0) -> tuple[LanguageSpeech, ...]:
    """Per language, ``n_train`` + ``n_val`` + ``n_test`` pseudo-words (different words per language and
    split, from ``seed``; adding test words leaves the train and validation words unchanged) synthesised
    by espeak-ng (``workers`` processes at a time), each language read by its ``speakers`` variant (one
    speaker per language, as in CSS10; None = default voices). Kept in memory per arguments."""
    espeak_binary()
    check_count(n_train, "n_train")
    check_count(n_val, "n_val")
    speakers = speakers or ("",) * len(languages)
    if len(speakers) != len(languages):
        raise InputError(f"give one speaker per language: {len(speakers)} speakers for {len(languages)} languages")
    corpus = []
    for index, (language, speaker) in enumerate(zip(languages, speakers)):
        words = pseudo_words(n_train + n_val + n_test, seed * 1000 + index)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            waves = list(pool.map(lambda w: synthesize(w, language, sample_rate, speaker), words))
        cut = n_train + n_val
        corpus.append(LanguageSpeech(language, tuple(words[:n_train]), tuple(waves[:n_train]),
                                     tuple(words[n_train:cut]), tuple(waves[n_train:cut]), sample_rate,
                                     tuple(words[cut:]), tuple(waves[cut:])))
    return tuple(corpus)


def encode_texts(texts: list[str] | tuple[str, ...], max_len: int, alphabet: str = ALPHABET) -> torch.Tensor:
    """(N, max_len) long character ids (1 + index in ``alphabet``; 0 pads). Characters outside the
    alphabet or a text longer than ``max_len`` -> InputError."""
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for row, text in enumerate(texts):
        _check_text(text)
        if len(text) > max_len:
            raise InputError(f"text {text!r} has {len(text)} characters; max_len is {max_len}")
        bad = sorted({c for c in text if c not in alphabet})
        if bad:
            raise InputError(f"text {text!r} has characters outside the alphabet: {''.join(bad)!r}")
        ids[row, :len(text)] = torch.tensor([alphabet.index(c) + 1 for c in text])
    return ids
