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


def test_trimmed_drops_only_padding_columns():
    import torch

    from honed.experiments.e23_dsee import trimmed

    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    short_ids, short_mask = trimmed(ids, mask)
    assert short_ids.tolist() == [[5, 6], [7, 0]] and short_mask.tolist() == [[1, 1], [1, 0]]


def test_correct_per_sentence_keeps_test_order_across_length_sorted_batches():
    import torch

    from honed.experiments.e23_dsee import correct_per_sentence

    class FirstTokenParity(torch.nn.Module):  # predicts class = first token id % 2
        def forward(self, ids, mask):
            return torch.nn.functional.one_hot(ids[:, 0] % 2, 2).float()

    lengths = [3, 1, 4, 2, 1]
    ids = torch.tensor([[10 + i] + [1] * 3 for i in range(5)])
    mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    y = torch.tensor([0, 0, 0, 1, 1])  # first tokens 10..14 -> parity 0 1 0 1 0
    got = correct_per_sentence(FirstTokenParity(), {"input_ids": ids, "attention_mask": mask, "y": y}, batch=2)
    assert got == [1.0, 0.0, 1.0, 1.0, 0.0]
