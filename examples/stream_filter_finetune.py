"""Fine-tune your own model through honed's multistage streaming filter (arXiv:2207.14386).

The filter wraps your training step: stage 0 trains normally and fixes a loss threshold tau; stage 1
back-propagates only examples whose loss is >= tau while a naive Bayes predictor learns to tell them
apart from cheap binary features phi(x); stage 2 lets the predictor skip the forward of predicted-easy
examples. It is meant for fine-tuning a warm model (tau is frozen after stage 0), so this script first
pre-trains the CNN on half the digits, then streams the other half through the filter with duplicates.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.efficient.stream_filter import StreamFilter

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8) in [0, 1]
y = torch.tensor(digits.target)
x_warm, y_warm, x_stream, y_stream, x_test, y_test = x[:600], y[:600], x[600:1400], y[600:1400], x[1400:], y[1400:]
x_stream = torch.cat([x_stream, (x_stream + 0.05 * torch.randn_like(x_stream)).clamp(0, 1)])  # near-duplicates
y_stream = torch.cat([y_stream, y_stream])

model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(16 * 4 * 4, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2 if TINY else 10):  # the "pre-trained" model: an ordinary warm-up
    for batch in torch.randperm(len(x_warm)).split(32):
        loss = F.cross_entropy(model(x_warm[batch]), y_warm[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def per_example_loss(model, inputs, targets):
    return F.cross_entropy(model(inputs), targets, reduction="none")  # one loss per example: (B,)


batch_size = 16
steps_per_epoch = len(y_stream) // batch_size
stream = StreamFilter(model, optimizer, per_example_loss, batch_size,
                      warmup_steps=max(1, steps_per_epoch // 5),  # stage 0: 20% of the first epoch
                      predictor_loss_threshold=0.35)
model.train()
for epoch in range(1 if TINY else 2):
    for batch in torch.randperm(len(y_stream)).split(batch_size):
        phi = (x_stream[batch].flatten(1) > 0.5).numpy().astype("uint8")  # binary features of each example
        stream.step(x_stream[batch], y_stream[batch], phi)
    stream.end_epoch()  # forces stage 2 for the next epoch; warns if the filter stopped training

model.eval()
with torch.no_grad():
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
c = stream.counters()
print(f"test accuracy {accuracy:.3f}; of {c['seen']} streamed examples {c['backward_examples']} were back-propagated "
      f"and {c['forward_skipped']} skipped even the forward pass (final stage {c['stage']}, tau {c['tau']:.3f})")
