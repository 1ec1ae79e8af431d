"""Lifelong multilingual TTS with data replay and a dual sampler (Towards lifelong learning of
multilingual text-to-speech synthesis, arXiv:2110.04482): the small text-to-mel model with duplicated
output heads, the global replay buffer with the t/(t+1) rule, the random / weighted / class-balanced /
dual samplers and the dual-sampler loss.

A dataset for a task is a list of items; samplers only see each item's language index (a 1-D long
tensor ``languages``) and return batches of item positions. The model maps character ids (B, L) long
(0 pads) and language indices (B,) long to a mel spectrogram (B, frames, n_mels).
"""
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError, check_count, check_number

HEADS = ("main", "rrs")


class TextToMel(nn.Module):
    """The card's small non-autoregressive text-to-mel model (arXiv:2110.04482 reproduction): character
    embedding + position + language one-hot -> ``encoder_layers`` transformer layers -> ``frames``
    learned positional queries (plus the language) cross-attending to the characters -> a shared MLP
    trunk -> an output head. ``dual_heads`` duplicates the mel projection: head "rrs" for random batches,
    head "main" for class-balanced batches and inference; the trunk and everything before it are shared."""

    def __init__(self, vocab: int = 27, languages: int = 4, n_mels: int = 40, frames: int = 48, max_len: int = 16,
                 dim: int = 64, heads: int = 4, encoder_layers: int = 2, trunk: int = 128, dual_heads: bool = True) -> None:
        super().__init__()
        self.vocab, self.languages, self.max_len = vocab, languages, max_len
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.char_pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.lang_in = nn.Linear(languages, dim, bias=False)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(frames, dim) * 0.02)
        self.lang_query = nn.Linear(languages, dim, bias=False)
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.trunk = nn.Sequential(nn.Linear(dim + languages, trunk), nn.ReLU(), nn.Linear(trunk, trunk), nn.ReLU())
        self.heads = nn.ModuleDict({"main": nn.Linear(trunk, n_mels)})
        if dual_heads:
            self.heads["rrs"] = nn.Linear(trunk, n_mels)

    def _check(self, text_ids: torch.Tensor, languages: torch.Tensor, head: str) -> None:
        if not isinstance(text_ids, torch.Tensor) or text_ids.dim() != 2 or text_ids.dtype != torch.long:
            raise InputError(f"text_ids must be a long tensor (B, L), got "
                             f"{tuple(text_ids.shape) if isinstance(text_ids, torch.Tensor) else type(text_ids).__name__}")
        if text_ids.shape[1] > self.max_len or text_ids.min() < 0 or text_ids.max() >= self.vocab:
            raise InputError(f"text_ids must hold ids in [0, {self.vocab}) and at most {self.max_len} columns")
        if (text_ids != 0).sum(1).min() == 0:
            raise InputError("every text needs at least one character (a row of text_ids is all padding)")
        if languages.shape != (text_ids.shape[0],) or languages.min() < 0 or languages.max() >= self.languages:
            raise InputError(f"languages must be ({text_ids.shape[0]},) indices in [0, {self.languages})")
        if head not in self.heads:
            raise InputError(f"head must be one of {list(self.heads)}, got {head!r}")

    def forward(self, text_ids: torch.Tensor, languages: torch.Tensor, head: str = "main") -> torch.Tensor:
        self._check(text_ids, languages, head)
        onehot = F.one_hot(languages, self.languages).to(self.queries.dtype)
        length = text_ids.shape[1]
        chars = self.embed(text_ids) + self.char_pos[:length] + self.lang_in(onehot)[:, None]
        pad = text_ids == 0
        encoded = self.encoder(chars, src_key_padding_mask=pad)
        queries = self.queries[None] + self.lang_query(onehot)[:, None]
        attended, _ = self.attend(queries.expand(len(text_ids), -1, -1), encoded, encoded, key_padding_mask=pad)
        hidden = self.trunk(torch.cat([attended, onehot[:, None].expand(-1, attended.shape[1], -1)], -1))
        return self.heads[head](hidden)


class ReplayBuffer:
    """The global replay buffer (card step 1): at most ``capacity`` items in total. ``start`` fills it
    with ``capacity`` random items of the base language; after finishing task t (t = 1 for the first new
    language) ``update`` keeps floor(capacity * t / (t + 1)) random items and adds floor(capacity / (t + 1))
    random items of the language just learned. Items are (language index, item index) pairs."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = check_count(capacity, "capacity")
        self.gen = torch.Generator().manual_seed(seed)
        self.items: list[tuple[int, int]] = []

    def _sample(self, pool: list, count: int) -> list:
        order = torch.randperm(len(pool), generator=self.gen)[:count].tolist()
        return [pool[i] for i in order]

    def start(self, language: int, indices: list[int]) -> None:
        self.items = self._sample([(language, i) for i in indices], self.capacity)

    def update(self, task: int, language: int, indices: list[int]) -> None:
        check_count(task, "task")
        keep, add = self.capacity * task // (task + 1), self.capacity // (task + 1)
        self.items = self._sample(self.items, keep) + self._sample([(language, i) for i in indices], add)

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for language, _ in self.items:
            out[language] = out.get(language, 0) + 1
        return out


def _check_languages(languages: torch.Tensor, batch_size: int) -> None:
    if not isinstance(languages, torch.Tensor) or languages.dim() != 1 or len(languages) == 0:
        raise InputError("languages must be a non-empty 1-D tensor of language indices, one per item")
    check_count(batch_size, "batch_size")


def random_batches(languages: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """RS / the RRS loader: one shuffled pass over the items in batches of ``batch_size`` (last one
    may be smaller)."""
    _check_languages(languages, batch_size)
    return list(torch.randperm(len(languages), generator=gen).split(batch_size))


def weighted_batches(languages: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """WS: len(items) draws with replacement, each item weighted 1 / (count of its language)."""
    _check_languages(languages, batch_size)
    counts = torch.bincount(languages)
    weights = 1.0 / counts[languages].double()
    return list(torch.multinomial(weights, len(languages), replacement=True, generator=gen).split(batch_size))


def class_balanced_batches(languages: torch.Tensor, batch_size: int, num_batches: int,
                           gen: torch.Generator) -> list[torch.Tensor]:
    """The CBS loader: ``num_batches`` batches of ``batch_size``, each filled round-robin with one item per
    language (every language present, the current one included) from per-language shuffled cyclic
    iterators; a language is reshuffled each time its iterator wraps."""
    _check_languages(languages, batch_size)
    check_count(num_batches, "num_batches")
    present = torch.unique(languages).tolist()
    cycles = {lang: _cycle((languages == lang).nonzero().flatten(), gen) for lang in present}
    batches, turn = [], 0
    for _ in range(num_batches):
        batch = []
        for _ in range(batch_size):
            batch.append(next(cycles[present[turn % len(present)]]))
            turn += 1
        batches.append(torch.stack(batch))
    return batches


def _cycle(indices: torch.Tensor, gen: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from indices[torch.randperm(len(indices), generator=gen)]


def dual_batches(languages: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The dual sampler: (RRS batch, CBS batch) pairs in lock-step, as many CBS batches of ``batch_size``
    as the RRS loader has batches (total CBS samples = RRS batches x batch size)."""
    rrs = random_batches(languages, batch_size, gen)
    return list(zip(rrs, class_balanced_batches(languages, batch_size, len(rrs), gen)))


def dual_sampler_loss(loss_of: Callable[[torch.Tensor, str], torch.Tensor], rrs_batch: torch.Tensor,
                      cbs_batch: torch.Tensor, rrs_weight: float = 1.0, cbs_weight: float = 0.5) -> torch.Tensor:
    """Card step 3: ``rrs_weight * loss_of(rrs_batch, "rrs") + cbs_weight * loss_of(cbs_batch, "main")``
    where ``loss_of(batch, head)`` is the TTS loss of a batch through one head (weights 1.0 / 0.5)."""
    check_number(rrs_weight, "rrs_weight")
    check_number(cbs_weight, "cbs_weight")
    return rrs_weight * loss_of(rrs_batch, "rrs") + cbs_weight * loss_of(cbs_batch, "main")
