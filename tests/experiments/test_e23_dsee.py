"""23-dsee experiment data (DSEE, arXiv:2111.00160): the corpus option and its splits."""
import pytest

from honed.core.errors import ConfigError
from honed.experiments.e23_dsee import DSEEConfig, load_rows


def test_tweets_rows_are_three_class_and_train_test_disjoint():
    train, test, classes = load_rows(DSEEConfig(train_size=60, test_size=30), seed=0)
    assert classes == 3 and len(train) == 60 and len(test) == 30
    assert {y for _, y in train} == {0, 1, 2}
    assert not {t for t, _ in train} & {t for t, _ in test}


def test_negation_rows_label_is_word_polarity_flipped_by_not():
    train, _, classes = load_rows(DSEEConfig(corpus="negation", train_size=40, test_size=10), seed=1)
    assert classes == 2
    for text, label in train:
        positive_word = any(text.endswith(w) for w in ("good", "great", "pleasant", "excellent", "enjoyable",
                                                       "lovely", "fine", "wonderful"))
        assert label == int(positive_word != (" not " in text))


def test_unknown_corpus_is_a_config_error():
    with pytest.raises(ConfigError, match="corpus"):
        DSEEConfig(corpus="imdb").validate()
