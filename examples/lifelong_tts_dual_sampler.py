"""Lifelong multilingual TTS (arXiv:2110.04482) in your own loop: learn German, then Dutch, replaying a
small buffer of German words through the dual sampler (random batches through an "rrs" head,
class-balanced batches through the main head, loss 1.0 / 0.5), and compare the German MCD with plain
fine-tuning. Speech comes from espeak-ng (``apt-get install -y espeak-ng``), features from librosa (the
``speech`` extra). ``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import copy
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

if shutil.which("espeak-ng") is None:
    print("espeak-ng is not installed: apt-get install -y espeak-ng")
    sys.exit(0)

from honed.data.espeak_speech import encode_texts, espeak_corpus  # noqa: E402
from honed.sequence.lifelong_tts import ReplayBuffer, TextToMel, dual_batches, dual_sampler_loss, random_batches  # noqa: E402
from honed.sequence.tts_features import MelNormalizer, log_mel, mel_cepstral_distortion  # noqa: E402

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
N, EPOCHS = (16, 2) if TINY else (150, 30)

german, dutch = espeak_corpus(("de", "nl"), N, 10)
texts = [list(l.train_texts) for l in (german, dutch)]
mels = [torch.from_numpy(np.stack([log_mel(w, l.sample_rate) for w in l.train_waves])) for l in (german, dutch)]
norm = MelNormalizer.fit(torch.cat(mels))  # one normalisation for every language
max_len = max(len(t) for l in (german, dutch) for t in l.train_texts + l.val_texts)
x = [encode_texts(t, max_len) for t in texts]
y = [norm(m) for m in mels]


def fit(model, ids, langs, targets, epochs, dual=False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    loss_of = lambda b, head: F.mse_loss(model(ids[b], langs[b], head), targets[b])  # noqa: E731
    for _ in range(epochs):
        for batch in dual_batches(langs, 16, gen) if dual else random_batches(langs, 16, gen):
            loss = dual_sampler_loss(loss_of, *batch) if dual else loss_of(batch, "main")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
    return model.eval()


def german_mcd(model):
    val = encode_texts(list(german.val_texts), max_len)
    with torch.no_grad():
        pred = norm.invert(model(val, torch.zeros(len(val), dtype=torch.long))).numpy()
    refs = [log_mel(w, german.sample_rate) for w in german.val_waves]
    return float(np.mean([mel_cepstral_distortion(p, r) for p, r in zip(pred, refs)]))


torch.manual_seed(0)
base = fit(TextToMel(languages=2, max_len=max_len, dim=32, trunk=64), x[0], torch.zeros(N, dtype=torch.long), y[0],
           EPOCHS)
base.heads["rrs"].load_state_dict(base.heads["main"].state_dict())
print(f"German MCD after learning German: {german_mcd(base):.2f}")

finetuned = fit(copy.deepcopy(base), x[1], torch.ones(N, dtype=torch.long), y[1], EPOCHS)
buffer = ReplayBuffer(N // 4, seed=0)
buffer.start(0, list(range(N)))
old = torch.tensor([i for _, i in buffer.items])
ids = torch.cat([x[1], x[0][old]])
langs = torch.cat([torch.ones(N, dtype=torch.long), torch.zeros(len(old), dtype=torch.long)])
replayed = fit(copy.deepcopy(base), ids, langs, torch.cat([y[1], y[0][old]]), EPOCHS, dual=True)
print(f"German MCD after learning Dutch: fine-tune {german_mcd(finetuned):.2f}, "
      f"dual-sampler replay of {len(old)} German words {german_mcd(replayed):.2f}")
