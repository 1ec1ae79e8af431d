"""Lifelong TTS components (arXiv:2110.04482) on a model defined here, in a plain loop over two "languages"
of synthetic (text, mel) pairs: the replay buffer, the dual sampler with two heads, EWC and GEM; bad
inputs (an empty batch of languages, a negative importance, an all-padding text) give one InputError and
leave the model as it was."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.sequence.continual import EWC, GEM
from honed.sequence.lifelong_tts import ReplayBuffer, dual_batches, dual_sampler_loss, random_batches


class UserTTS(nn.Module):
    """A user's toy text-to-mel: bag of characters + language -> 6 frames x 4 mel bins, two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(10, 16, padding_idx=0)
        self.lang = nn.Embedding(2, 16)
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.heads = nn.ModuleDict({"main": nn.Linear(32, 24), "rrs": nn.Linear(32, 24)})

    def forward(self, ids: torch.Tensor, lang: torch.Tensor, head: str = "main") -> torch.Tensor:
        return self.heads[head](self.trunk(self.embed(ids) + self.lang(lang))).view(-1, 6, 4)


def language_data(lang: int, n: int):
    g = torch.Generator().manual_seed(lang)
    ids = torch.randint(1, 10, (n, 5), generator=g)
    mels = torch.randn(n, 6, 4, generator=g) + 3 * lang
    return ids, torch.full((n,), lang), mels


def test_dual_sampler_replay_with_ewc_and_gem_in_a_plain_loop():
    torch.manual_seed(0)
    model = UserTTS()
    old, new = language_data(0, 40), language_data(1, 40)
    buffer = ReplayBuffer(10, seed=0)
    buffer.start(0, list(range(40)))
    rows = [old[0][i] for _, i in buffer.items]
    ids = torch.cat([new[0], torch.stack(rows)])
    langs = torch.cat([new[1], torch.zeros(len(rows), dtype=torch.long)])
    mels = torch.cat([new[2], torch.stack([old[2][i] for _, i in buffer.items])])
    ewc, gem = EWC(model, importance=1.0), GEM(model, margin=0.5)
    ewc.consolidate([torch.arange(20), torch.arange(20, 40)],
                    lambda b: ((model(old[0][b], old[1][b]) - old[2][b]) ** 2).mean())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    loss_of = lambda b, head: ((model(ids[b], langs[b], head) - mels[b]) ** 2).mean()  # noqa: E731
    for epoch in range(3):
        for rrs, cbs in dual_batches(langs, 8, gen):
            memories = gem.memory_gradients([torch.arange(10)], lambda b: loss_of(b + 40, "main"))
            loss = dual_sampler_loss(loss_of, rrs, cbs) + ewc.penalty()
            opt.zero_grad()
            loss.backward()
            gem.project(memories)
            opt.step()
    assert torch.isfinite(loss) and ewc.penalty() > 0
    buffer.update(1, 1, list(range(40)))
    assert buffer.counts() == {0: 5, 1: 5}


def test_bad_inputs_are_refused_and_change_nothing():
    model = UserTTS()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="non-empty"):
        random_batches(torch.tensor([], dtype=torch.long), 4, torch.Generator())
    with pytest.raises(InputError, match="importance"):
        EWC(model, importance=-1.0)
    with pytest.raises(InputError, match="capacity"):
        ReplayBuffer(0)
    with pytest.raises(InputError, match="at least one batch"):
        EWC(model).consolidate([], lambda b: model(b, b).sum())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
