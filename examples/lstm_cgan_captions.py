"""LSTM conditional GAN (arXiv:1806.03027) in your own loop: a caption is read word by word and an image
is rendered after every word; here with your own small discriminator.

The D optimiser of ``LSTMCGANTrainer`` owns your discriminator and the generator's mask head; the G
optimiser owns the LSTM, trunk and image head; each ``step`` is one D update and two G updates.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
from torch import nn

from honed.data.shape_captions import encode_captions, make_captioned_shapes, split_combinations, word_vectors
from honed.generative.lstm_cgan import LSTMCGANTrainer, LSTMConditionalGenerator, wrong_image_indices

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
torch.manual_seed(0)

train_combos, test_combos = split_combinations(held_out=0.2, seed=0)
data = make_captioned_shapes(200 if TINY else 2000, train_combos, seed=0, size=16)
vectors = word_vectors(32)
words, mask, sentence = encode_captions(data.captions, vectors)


class MyDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 4, 2, 1),
                                   nn.LeakyReLU(0.2), nn.Flatten())
        self.score = nn.Linear(32 * 16 + 32, 1)

    def forward(self, image, sentence):
        return self.score(torch.cat([self.image(image), sentence], 1)).squeeze(1)


gen = LSTMConditionalGenerator(word_dim=32, hidden=64, channels=(32, 16))
trainer = LSTMCGANTrainer(gen, MyDiscriminator(), steps_per_caption=4)
for it in range(10 if TINY else 800):
    idx = torch.randint(len(data), (32,))
    wrong = data.images[idx][wrong_image_indices(data.attributes[idx])]
    losses = trainer.step(words[idx], mask[idx], sentence[idx], data.images[idx], wrong)
print(f"after {trainer.d_updates} D / {trainer.g_updates} G updates: {losses}")

caption = "one big red circle at the left"
w, m, _ = encode_captions([caption], vectors)
gen.eval()
steps, _ = gen(w, m)  # (1, T, 3, 16, 16): the image after every word
print(f"{caption!r}: {int(m.sum())} per-word images, final image mean {gen.final_image(w, m).mean():.3f}")
