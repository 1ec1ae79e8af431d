"""25-lifelong-tts: learning a multilingual text-to-mel model one language at a time, with replay of a
small global buffer through random, weighted and dual (random + class-balanced, two heads) samplers,
against fine-tuning, EWC, GEM and joint training (Towards lifelong learning of multilingual
text-to-speech synthesis, arXiv:2110.04482).

Per seed: a base model learns German; then Dutch, Spanish and Italian arrive one at a time, each arm
training the same number of epochs per language from the same base model. After the last language,
every arm synthesises the test words of every language (free-running: the model is
non-autoregressive) and is scored by mel-cepstral distortion (MFCC c1..c13, DTW) per utterance.
"""
import copy
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from honed.core.config import ExperimentConfig
from honed.core.errors import ConfigError
from honed.core.experiment import Claim, Experiment, Invariant, Precondition, SeedOutput, register_experiment
from honed.data.espeak_speech import encode_texts, espeak_binary, espeak_corpus
from honed.sequence.continual import EWC, GEM
from honed.sequence.lifelong_tts import (ReplayBuffer, TextToMel, class_balanced_batches, dual_batches,
                                         dual_sampler_loss, random_batches, weighted_batches)
from honed.sequence.tts_features import MelNormalizer, MelSpec, log_mel, mel_cepstral_distortion

ARMS = ("finetune", "ewc", "gem", "replay_rs", "replay_ws", "replay_dual", "joint")
REPLAY = {"replay_rs": random_batches, "replay_ws": weighted_batches}


@dataclass(frozen=True)
class LifelongTTSConfig(ExperimentConfig):
    """Defaults are the ``small`` preset: one seed (claims get paired bootstrap intervals over the
    test words), 200 words per language + 50 validation + 50 test (card: ~300 + 50), buffer 60 (card).
    The validation words were the ones read while the setting (voices, epochs) was designed; the claims
    are scored on test words that were generated afterwards and never looked at during that design.
    ``full`` runs 5 seeds, 300 words, 80 base and 60 epochs per language (an estimate, not measured:
    about 15x the small run's time)."""

    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    languages: tuple[str, ...] = ("de", "nl", "es", "it")
    speakers: tuple[str, ...] = ("m3", "f2", "m6", "f4")  # one espeak-ng voice variant per language, as CSS10
    n_train: int = 200
    n_val: int = 50
    n_test: int = 50  # fresh words: the claims are scored here (the validation words guided the design)
    corpus_seed: int = 0
    buffer: int = 60
    base_epochs: int = 40
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-6
    clip: float = 0.25
    dim: int = 64
    trunk: int = 128
    ewc_importance: float = 1.0
    gem_margin: float = 0.5
    rrs_weight: float = 1.0
    cbs_weight: float = 0.5

    @classmethod
    def smoke(cls) -> "LifelongTTSConfig":  # the card's smoke: 2 languages, 40 items
        return replace(cls(), seeds=(0,), languages=("de", "nl"), speakers=("m3", "f2"), n_train=32, n_val=8, n_test=8, buffer=8,
                       base_epochs=2, epochs=2, batch=8, dim=16, trunk=32)

    @classmethod
    def full(cls) -> "LifelongTTSConfig":
        return replace(cls(), seeds=(0, 1, 2, 3, 4), n_train=300, base_epochs=80, epochs=60)

    def validate(self) -> None:
        if len(self.languages) < 2 or len(set(self.languages)) != len(self.languages):
            raise ConfigError(f"languages must name at least 2 distinct espeak-ng voices, got {self.languages}")
        for name in ("n_train", "n_val", "n_test", "buffer", "base_epochs", "epochs", "batch", "dim", "trunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.speakers) != len(self.languages):
            raise ConfigError(f"speakers needs one espeak-ng variant per language, got {self.speakers}")
        if self.buffer > self.n_train:
            raise ConfigError(f"buffer ({self.buffer}) cannot exceed n_train ({self.n_train})")


@dataclass
class Corpus:
    """Per language l: train character ids (N, L) and normalised log-mels (N, frames, n_mels), and the test
    words' ids and log-mels in dB (for MCD); one normaliser fitted on the training data of all languages.
    The validation words are not loaded: they were the ones looked at while the setting was designed."""

    train_x: list[torch.Tensor]
    train_y: list[torch.Tensor]
    test_x: list[torch.Tensor]
    test_db: list[np.ndarray]
    norm: MelNormalizer
    max_len: int


@lru_cache(maxsize=2)
def load_corpus(languages: tuple[str, ...], speakers: tuple[str, ...], n_train: int, n_val: int, n_test: int,
                seed: int) -> Corpus:
    speech = espeak_corpus(languages, n_train, n_val, seed, speakers=speakers, n_test=n_test)
    spec = MelSpec()
    mels = {(l.language, part): np.stack([log_mel(w, l.sample_rate, spec) for w in getattr(l, f"{part}_waves")])
            for l in speech for part in ("train", "test")}
    max_len = max(len(t) for l in speech for t in l.train_texts + l.val_texts + l.test_texts)
    norm = MelNormalizer.fit(torch.from_numpy(np.concatenate([mels[(l, "train")] for l in languages])))
    return Corpus([encode_texts(l.train_texts, max_len) for l in speech],
                  [norm(torch.from_numpy(mels[(l.language, "train")])) for l in speech],
                  [encode_texts(l.test_texts, max_len) for l in speech], [mels[(l, "test")] for l in languages],
                  norm, max_len)


class Task:
    """The items one arm trains on for a task: ids (N, L), target mels and language indices."""

    def __init__(self, corpus: Corpus, items: list[tuple[int, int]]) -> None:
        langs = torch.tensor([lang for lang, _ in items])
        index = torch.tensor([i for _, i in items])
        self.x = torch.stack([corpus.train_x[lang][i] for lang, i in items]) if items else None
        self.y = torch.stack([corpus.train_y[lang][i] for lang, i in items]) if items else None
        self.langs, self.index = langs, index

    def loss_of(self, model: TextToMel, batch: torch.Tensor, head: str = "main") -> torch.Tensor:
        device = model.queries.device
        return F.mse_loss(model(self.x[batch].to(device), self.langs[batch].to(device), head), self.y[batch].to(device))


def language_items(corpus: Corpus, lang: int) -> list[tuple[int, int]]:
    return [(lang, i) for i in range(len(corpus.train_x[lang]))]


def make_model(cfg: LifelongTTSConfig, corpus: Corpus, seed: int, device: torch.device) -> TextToMel:
    torch.manual_seed(seed)
    return TextToMel(languages=len(cfg.languages), n_mels=MelSpec().n_mels, frames=MelSpec().frames,
                     max_len=corpus.max_len, dim=cfg.dim, trunk=cfg.trunk).to(device)


def run_epochs(model: TextToMel, cfg: LifelongTTSConfig, epochs: int, batches_of_epoch, loss_of_batch,
               after_backward=None) -> None:
    """Adam (card: lr 1e-3, wd 1e-6, step decay x0.5 at half the epochs), grad-norm clip, ``epochs`` passes."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 2), gamma=0.5)
    model.train()
    for _ in range(epochs):
        for batch in batches_of_epoch():
            opt.zero_grad()
            loss = loss_of_batch(batch)
            loss.backward()
            if after_backward is not None:
                after_backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
        decay.step()
    model.eval()


def train_task(arm: str, model: TextToMel, corpus: Corpus, cfg: LifelongTTSConfig, task: int,
               buffer: ReplayBuffer, ewc: EWC, gen: torch.Generator) -> None:
    """One arm learns language ``task`` (>= 1) for ``cfg.epochs`` epochs."""
    new = language_items(corpus, task)
    if arm == "joint":
        data = Task(corpus, [item for lang in range(task + 1) for item in language_items(corpus, lang)])
    elif arm in REPLAY or arm == "replay_dual":
        data = Task(corpus, new + buffer.items)
    else:
        data = Task(corpus, new)
    if arm == "replay_dual":
        run_epochs(model, cfg, cfg.epochs, lambda: dual_batches(data.langs, cfg.batch, gen),
                   lambda pair: dual_sampler_loss(lambda b, head: data.loss_of(model, b, head), *pair,
                                                  cfg.rrs_weight, cfg.cbs_weight))
        return
    sampler = REPLAY.get(arm, random_batches)
    batches = lambda: sampler(data.langs, cfg.batch, gen)  # noqa: E731
    if arm == "ewc":
        run_epochs(model, cfg, cfg.epochs, batches, lambda b: data.loss_of(model, b) + ewc.penalty(model))
    elif arm == "gem":
        gem, memory = GEM(model, cfg.gem_margin), {}
        old = [Task(corpus, [it for it in buffer.items if it[0] == lang]) for lang in range(task)]

        def loss_with_memory(batch: torch.Tensor) -> torch.Tensor:
            memory["grads"] = gem.memory_gradients(
                [t for t in old if t.x is not None], lambda t: t.loss_of(model, torch.arange(len(t.langs))))
            return data.loss_of(model, batch)

        run_epochs(model, cfg, cfg.epochs, batches, loss_with_memory, lambda: gem.project(memory["grads"]))
    else:
        run_epochs(model, cfg, cfg.epochs, batches, lambda b: data.loss_of(model, b))


def mcd_per_utterance(model: TextToMel, corpus: Corpus, lang: int) -> list[float]:
    """Free-running synthesis (main head) of language ``lang``'s test words, MCD to the reference."""
    device = model.queries.device
    x = corpus.test_x[lang].to(device)
    with torch.no_grad():
        pred = corpus.norm.invert(model(x, torch.full((len(x),), lang, device=device))).cpu().numpy()
    return [mel_cepstral_distortion(p, r) for p, r in zip(pred, corpus.test_db[lang])]


def mean_mel_mcd(corpus: Corpus, lang: int) -> list[float]:
    """The trivial predictor: the mean training mel (all languages) for every word."""
    mean = corpus.norm.invert(torch.zeros(corpus.test_db[lang].shape[1:])).numpy()
    return [mel_cepstral_distortion(mean, r) for r in corpus.test_db[lang]]


class Lifelong:
    """One seed: the shared base model (German), then each arm's pass over the remaining languages."""

    def __init__(self, cfg: LifelongTTSConfig, seed: int, device: torch.device) -> None:
        self.cfg, self.seed, self.device = cfg, seed, device
        self.corpus = load_corpus(cfg.languages, cfg.speakers, cfg.n_train, cfg.n_val, cfg.n_test, cfg.corpus_seed)
        self._base: TextToMel | None = None

    def base(self) -> TextToMel:
        if self._base is None:
            cfg, gen = self.cfg, torch.Generator().manual_seed(self.seed)
            model, data = make_model(cfg, self.corpus, self.seed, self.device), Task(self.corpus, language_items(self.corpus, 0))
            run_epochs(model, cfg, cfg.base_epochs, lambda: random_batches(data.langs, cfg.batch, gen),
                       lambda b: data.loss_of(model, b))
            with torch.no_grad():  # the duplicated head starts as a copy of the trained one
                model.heads["rrs"].load_state_dict(model.heads["main"].state_dict())
            self._base = model
        return self._base

    def run_arm(self, arm: str) -> dict[str, Any]:
        cfg, corpus = self.cfg, self.corpus
        model, gen = copy.deepcopy(self.base()), torch.Generator().manual_seed(self.seed + 1)
        buffer = ReplayBuffer(cfg.buffer, seed=self.seed + 2)
        buffer.start(0, list(range(len(corpus.train_x[0]))))
        ewc = EWC(model, cfg.ewc_importance)
        learned = {0: mcd_per_utterance(model, corpus, 0)}
        curve, sizes = [float(np.mean(learned[0]))], [len(buffer.items)]
        for task in range(1, len(cfg.languages)):
            if arm == "ewc":  # Fisher from the previous task's checkpoint, on that task's data
                prev = Task(corpus, language_items(corpus, task - 1))
                ewc.consolidate(random_batches(prev.langs, cfg.batch, gen), lambda b: prev.loss_of(model, b))
            train_task(arm, model, corpus, cfg, task, buffer, ewc, gen)
            buffer.update(task, task, list(range(len(corpus.train_x[task]))))
            sizes.append(len(buffer.items))
            learned[task] = mcd_per_utterance(model, corpus, task)
            seen = [mcd_per_utterance(model, corpus, lang) for lang in range(task)] + [learned[task]]
            curve.append(float(np.mean([np.mean(s) for s in seen])))
        final = {lang: mcd_per_utterance(model, corpus, lang) for lang in range(len(cfg.languages) - 1)}
        final[len(cfg.languages) - 1] = learned[len(cfg.languages) - 1]
        return {"final": final, "learned": learned, "curve": curve, "buffer_sizes": sizes,
                "buffer_counts": buffer.counts()}


def arm_metrics(cfg: LifelongTTSConfig, out: dict[str, Any]) -> dict[str, Any]:
    """Per-utterance MCD lists per language, over the old languages (all but the last), and forgetting."""
    final = {int(k): v for k, v in out["final"].items()}
    learned = {int(k): v for k, v in out["learned"].items()}
    old = range(len(cfg.languages) - 1)
    metrics = {f"mcd_{lang}": final[i] for i, lang in enumerate(cfg.languages)}
    metrics["mcd_old"] = [v for i in old for v in final[i]]
    metrics["mcd_new"] = final[len(cfg.languages) - 1]
    metrics["forgetting"] = [a - b for i in old for a, b in zip(final[i], learned[i])]
    return metrics


@register_experiment
class LifelongTTSExperiment(Experiment):
    id = "25-lifelong-tts"
    title = "Lifelong multilingual TTS: replay with a dual sampler vs fine-tuning, EWC and GEM"
    family = "sequence"
    paper = "Towards Lifelong Learning of Multilingual Text-To-Speech Synthesis (arXiv:2110.04482)"
    summary = ("espeak-ng reads pseudo-words of one shared alphabet in German, Dutch, Spanish and Italian (16 kHz, "
               "40-bin log-mel, 48 frames). A small non-autoregressive text-to-mel model learns German, then each "
               "other language in turn. Arms: fine-tuning, EWC, GEM (replay buffer as episodic memory), replay of "
               "a 60-item global buffer with random (RS), language-weighted (WS) and dual sampling (random + "
               "class-balanced batches through two output heads, loss 1.0 / 0.5), and joint training on every "
               "language seen (upper bound). MCD per test word and language after the last language.")
    Config = LifelongTTSConfig
    method = ("replay_dual",)
    baselines = tuple(a for a in ARMS if a != "replay_dual") + ("mean_mel",)
    components = ("honed.sequence.lifelong_tts:TextToMel", "honed.sequence.lifelong_tts:ReplayBuffer",
                  "honed.sequence.lifelong_tts:dual_batches", "honed.sequence.lifelong_tts:class_balanced_batches",
                  "honed.sequence.lifelong_tts:dual_sampler_loss", "honed.sequence.continual:EWC",
                  "honed.sequence.continual:GEM", "honed.sequence.tts_features:log_mel",
                  "honed.sequence.tts_features:mel_cepstral_distortion", "honed.data.espeak_speech:espeak_corpus")
    reconstructed = (
        "evaluation: the voices and epoch counts were settled in exploratory runs scored on the validation "
        "words; the claims are scored on separate test words (n_test) drawn after them, never read then",
        "data: espeak-ng pseudo-words of one shared alphabet instead of CSS10 sentences (card's small-scale data), "
        "each language read by its own espeak-ng voice variant (one speaker per language, as in CSS10); silence "
        "trimmed at 30 dB, log-mel resampled to 48 frames",
        "model: the card's small non-autoregressive text-to-mel net (2 transformer layers, 48 learned queries, MLP "
        "trunk) instead of Tacotron 2; loss MSE on the normalised mel; no stop token or guided attention",
        "the duplicated 'rrs' head starts as a copy of the base model's trained head",
        "Adam restarts per language; the step decay halves the learning rate at half of each language's epochs",
        "EWC: Fisher = mean over batches of squared batch gradients of the previous language's data, refreshed "
        "before each new language (importance 1.0, the card's value, on this loss scale)",
        "GEM: one memory gradient per previous language from its buffer items; the dual QP solved as bounded "
        "least squares (scipy lsq_linear) with memory strength 0.5",
        "joint: every language seen so far pooled, same epochs per language (the upper bound of the protocol)",
        "MCD: sqrt(sum_d dc_d^2) over MFCC c1..c13 from the dB log-mel (no 10 sqrt(2)/ln 10 factor), DTW path mean",
    )

    def run_seed(self, cfg: LifelongTTSConfig, seed: int, ctx: Any) -> SeedOutput:
        espeak_binary()  # one line naming the install command when espeak-ng is missing
        state = Lifelong(cfg, seed, ctx.device)
        arms, curves, extra = {}, {"mean MCD over the languages seen, after each language": {}}, {}
        for arm in ARMS:
            out = ctx.cached(arm, lambda a=arm: state.run_arm(a))
            arms[arm] = arm_metrics(cfg, out)
            curves["mean MCD over the languages seen, after each language"][arm] = out["curve"]
            extra[f"{arm}_buffer_max"] = max(out["buffer_sizes"])
        baseline = ctx.cached("mean_mel", lambda: {
            str(i): mean_mel_mcd(state.corpus, i) for i in range(len(cfg.languages))})
        arms["mean_mel"] = {f"mcd_{lang}": baseline[str(i)] for i, lang in enumerate(cfg.languages)}
        arms["mean_mel"]["mcd_all"] = [v for i in range(len(cfg.languages)) for v in baseline[str(i)]]
        for arm in ARMS:
            arms[arm]["mcd_all"] = [v for lang in cfg.languages for v in arms[arm][f"mcd_{lang}"]]
        return SeedOutput(arms=arms, extra=extra, curves=curves)

    def claims(self, cfg: LifelongTTSConfig, result: Any) -> list[Claim]:
        m = result.metric
        dual = m("replay_dual", "mcd_old")
        claims = [Claim.check("relative old-language MCD reduction of replay_dual vs fine-tune",
                              1 - dual / m("finetune", "mcd_old"), ">=", 0.20,
                              "card: Dual reduces mean old-language MCD by >= 20% vs fine-tune (paper: 43%)",
                              metric="mcd_old")]
        for rival in ("gem", "ewc", "replay_ws", "replay_rs"):
            cmp, paper = ("<", "paper: the dual-sampler replay beats GEM and EWC") if rival in ("gem", "ewc") else \
                ("<=", "card: expected ordering Dual <= WS < RS on old-language MCD")
            claims.append(Claim.check(f"old-language MCD: replay_dual - {rival}", dual - m(rival, "mcd_old"), cmp, 0.0,
                                      paper, metric="mcd_old"))
        claims.append(Claim.check(
            "new-language MCD of replay_dual relative to fine-tune", m("replay_dual", "mcd_new") / m("finetune", "mcd_new")
            - 1, "<=", 0.05, "card: the new language's MCD stays within ~5% of fine-tune's", metric="mcd_new",
            requires=("the model learns speech",)))
        return claims

    def preconditions(self, cfg: LifelongTTSConfig, result: Any) -> list[Precondition]:
        m = result.metric
        return [Precondition.check("the model learns speech", 1 - m("joint", "mcd_all") / m("mean_mel", "mcd_all"),
                                   ">", 0.10, "joint training must beat predicting the average mel for every word "
                                   "by > 10% MCD, or no arm has learned to speak"),
                Precondition.check("fine-tuning forgets", m("finetune", "forgetting"), ">", 0.0,
                                   "the old languages' MCD under fine-tuning must rise from right after each was "
                                   "learned to the end of the sequence, or there is no forgetting for replay to reduce")]

    def invariants(self, cfg: LifelongTTSConfig, result: Any) -> list[Invariant]:
        sizes = [max(result.extra[k]["values"]) for k in result.extra if k.endswith("_buffer_max")]
        return [Invariant.check("replay buffer never exceeds its capacity", max(sizes), "<=", cfg.buffer,
                                "the t/(t+1) rule keeps floor(c t/(t+1)) + floor(c/(t+1)) <= c items")]

    def notes(self, cfg: LifelongTTSConfig, result: Any) -> list[str]:
        mean = result.mean
        rows = ", ".join(f"{a} {mean(a, 'mcd_old'):.2f} / {mean(a, 'mcd_new'):.2f} (forgetting "
                         f"{mean(a, 'forgetting'):+.2f})" for a in ARMS)
        per_lang = "; ".join(f"{a}: " + " ".join(f"{lang} {mean(a, f'mcd_{lang}'):.2f}" for lang in cfg.languages)
                             for a in ARMS + ("mean_mel",))
        return [f"MCD old / new language after the last language: {rows}.", f"MCD per language: {per_lang}.",
                f"task order {' -> '.join(cfg.languages)}, {cfg.n_train} training and {cfg.n_test} test words "
                f"per language, buffer {cfg.buffer}, {cfg.epochs} epochs per language after {cfg.base_epochs} base epochs."]
