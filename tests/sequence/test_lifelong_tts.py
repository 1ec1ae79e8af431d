"""Lifelong multilingual TTS (arXiv:2110.04482): the card's honest unit tests - the buffer's cap and
t/(t+1) rule, balanced CBS batches, lock-step dual loaders, head-separated gradients, MCD(x, x) = 0 and
symmetry - plus EWC / GEM on hand-computed values and one clear error for bad input."""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.data.espeak_speech import encode_texts, pseudo_words
from honed.sequence.continual import EWC, GEM, gem_project
from honed.sequence.lifelong_tts import (ReplayBuffer, TextToMel, class_balanced_batches, dual_batches,
                                         dual_sampler_loss, random_batches, weighted_batches)

librosa = pytest.importorskip("librosa")
from honed.sequence.tts_features import MelSpec, log_mel, mel_cepstral_distortion  # noqa: E402


def test_buffer_never_exceeds_its_cap_and_follows_the_t_over_t_plus_1_rule():
    buffer = ReplayBuffer(60, seed=0)
    buffer.start(0, list(range(200)))
    assert buffer.counts() == {0: 60}
    for task in (1, 2, 3):
        before = dict(buffer.counts())
        buffer.update(task, task, list(range(200)))
        assert len(buffer.items) <= 60
        assert buffer.counts()[task] == 60 // (task + 1)  # the language just learned
        assert sum(v for k, v in buffer.counts().items() if k != task) == 60 * task // (task + 1)
        assert all(buffer.counts().get(k, 0) <= v for k, v in before.items())  # old items are only dropped
    assert len(set(buffer.items)) == len(buffer.items)


def test_every_class_balanced_batch_has_equal_counts_per_language_including_the_current_one():
    languages = torch.tensor([0] * 5 + [1] * 7 + [2] * 100)  # 2 is the new, dominant language
    for batch in class_balanced_batches(languages, 6, 20, torch.Generator().manual_seed(0)):
        counts = torch.bincount(languages[batch], minlength=3)
        assert counts.tolist() == [2, 2, 2]


def test_rrs_and_cbs_loaders_yield_the_same_number_of_batches():
    languages = torch.tensor([0] * 10 + [1] * 43)
    pairs = dual_batches(languages, 8, torch.Generator().manual_seed(1))
    assert len(pairs) == len(random_batches(languages, 8, torch.Generator())) == 7
    assert all(len(cbs) == 8 for _, cbs in pairs)
    assert sorted(torch.cat([rrs for rrs, _ in pairs]).tolist()) == list(range(53))  # one pass over the items


def test_weighted_sampler_balances_languages():
    languages = torch.tensor([0] * 10 + [1] * 90)
    drawn = torch.cat([torch.cat(weighted_batches(languages, 10, torch.Generator().manual_seed(s))) for s in range(20)])
    share = (languages[drawn] == 0).float().mean().item()
    assert 0.4 < share < 0.6  # uniform sampling would give 0.1


def tiny_model() -> TextToMel:
    torch.manual_seed(0)
    return TextToMel(vocab=6, languages=2, n_mels=4, frames=5, max_len=4, dim=8, heads=2, trunk=8)


def test_heads_get_gradients_only_from_their_own_batches_and_the_trunk_from_both():
    model = tiny_model()
    x = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0]])
    lang = torch.tensor([0, 1])
    target = torch.zeros(2, 5, 4)
    loss_of = lambda batch, head: ((model(x[batch], lang[batch], head) - target[batch]) ** 2).mean()  # noqa: E731
    for rrs_weight, cbs_weight, live in ((1.0, 0.0, "rrs"), (0.0, 0.5, "main")):
        model.zero_grad()
        dual_sampler_loss(loss_of, torch.tensor([0]), torch.tensor([1]), rrs_weight, cbs_weight).backward()
        dead = "main" if live == "rrs" else "rrs"
        assert model.heads[dead].weight.grad is None or not model.heads[dead].weight.grad.any()
        assert model.heads[live].weight.grad.abs().sum() > 0
        assert model.trunk[0].weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0


def test_text_to_mel_shapes_and_bad_inputs():
    model = tiny_model()
    out = model(torch.tensor([[1, 2, 3, 0]]), torch.tensor([1]))
    assert out.shape == (1, 5, 4)
    with pytest.raises(InputError, match="at least one character"):
        model(torch.tensor([[0, 0, 0, 0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="languages"):
        model(torch.tensor([[1, 0, 0, 0]]), torch.tensor([2]))
    with pytest.raises(InputError, match="head"):
        model(torch.tensor([[1, 0, 0, 0]]), torch.tensor([0]), head="other")


def test_ewc_penalty_is_the_fisher_weighted_distance():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ewc = EWC(model, importance=3.0)
    ewc.consolidate([torch.tensor([[1.0]]), torch.tensor([[2.0]])], lambda x: (model(x) ** 2).sum())
    # d/dw (w x)^2 = 2 w x^2 -> 4 and 16 at w = 2; Fisher = (16 + 256) / 2 = 136
    assert ewc.fisher["weight"].item() == pytest.approx(136.0)
    with torch.no_grad():
        model.weight.fill_(2.5)
    assert ewc.penalty().item() == pytest.approx(3.0 * 136.0 * 0.25)


def test_gem_projection_on_hand_computed_vectors():
    g, memories = torch.tensor([1.0, 0.0]), torch.tensor([[-1.0, 1.0]])
    # minimise ||v m + g||^2 = (1 - v)^2 + v^2 subject to v >= 0.7: v = 0.7 -> (0.3, 0.7)
    assert torch.allclose(gem_project(g, memories, margin=0.7), torch.tensor([0.3, 0.7]), atol=1e-6)
    agreeing = torch.tensor([[1.0, 1.0]])
    assert gem_project(g, agreeing, margin=0.5) is g  # no violated constraint: unchanged


def test_gem_project_rewrites_the_model_gradients_only_on_violation():
    model = nn.Linear(2, 1, bias=False)
    gem = GEM(model, margin=0.0)
    memories = gem.memory_gradients([torch.tensor([[1.0, 0.0]])], lambda x: -model(x).sum())  # gradient (-1, 0)
    model(torch.tensor([[1.0, 1.0]])).sum().backward()  # current gradient (1, 1): violates
    assert gem.project(memories)
    assert float(model.weight.grad.flatten() @ memories[0]) >= -1e-6


def test_mcd_is_zero_on_itself_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(-40, 10, (48, 40)), rng.normal(-40, 10, (30, 40))
    assert mel_cepstral_distortion(a, a) == 0.0
    assert mel_cepstral_distortion(a, b) == pytest.approx(mel_cepstral_distortion(b, a))
    assert mel_cepstral_distortion(a, b) > 0


def test_log_mel_refuses_a_wrong_sample_rate_and_silence():
    wave = np.sin(np.linspace(0, 2000, 8000)).astype(np.float32) * 0.5
    assert log_mel(wave, 16000).shape == (MelSpec().frames, MelSpec().n_mels)
    with pytest.raises(InputError, match="16000 Hz"):
        log_mel(wave, 22050)
    with pytest.raises(InputError, match="silent"):
        log_mel(np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(InputError, match="mono"):
        log_mel(np.zeros((2, 8000), dtype=np.float32), 16000)


def test_texts_encode_to_ids_and_bad_texts_are_refused():
    assert encode_texts(["ab", "c"], 3).tolist() == [[1, 2, 0], [3, 0, 0]]
    with pytest.raises(InputError, match="non-empty"):
        encode_texts([""], 3)
    with pytest.raises(InputError, match="outside the alphabet"):
        encode_texts(["a1"], 3)
    words = pseudo_words(50, seed=3)
    assert len(set(words)) == 50 and all(w.isalpha() and w.islower() for w in words)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_espeak_synthesises_at_the_requested_rate_and_refuses_empty_text():
    from honed.data.espeak_speech import synthesize

    wave = synthesize("bamelo", "it", 16000)
    assert wave.dtype == np.float32 and 0.2 * 16000 < len(wave) < 3 * 16000 and np.abs(wave).max() > 0.05
    with pytest.raises(InputError, match="non-empty"):
        synthesize("  ", "it")


def test_a_bad_speaker_or_speaker_count_is_refused_before_espeak_runs():
    from honed.data.espeak_speech import espeak_corpus, synthesize

    with pytest.raises(InputError, match="variant"):
        synthesize("bamelo", "de", speaker="m3 -w /tmp/x")
    if shutil.which("espeak-ng") is not None:
        with pytest.raises(InputError, match="one speaker per language"):
            espeak_corpus(("de", "nl"), 2, 1, speakers=("m3",))
