"""Attack your own CNN with honed's PGD and CW, then certify it with randomized smoothing.

Plain PyTorch: the model and the training loop are the user's; honed supplies the attacks
(torchattacks' call shape) and ``Smooth`` (Cohen et al., arXiv:1902.02918). Data: sklearn digits.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.robust.attacks import CW, PGD
from honed.robust.certify import ABSTAIN, Smooth

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
torch.set_num_threads(1)
torch.manual_seed(0)

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8) in [0, 1]
y = torch.tensor(digits.target)
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
sigma = 0.25  # Gaussian noise augmentation: the base classifier smoothing needs
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2 if TINY else 15):
    for batch in torch.randperm(len(x_train)).split(64):
        noisy = x_train[batch] + sigma * torch.randn_like(x_train[batch])
        loss = F.cross_entropy(model(noisy), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()

with torch.no_grad():
    correct = model(x_test).argmax(1) == y_test
print(f"clean test accuracy: {correct.float().mean().item():.3f}")
n = 32 if TINY else 200
images, labels = x_test[correct][:n], y_test[correct][:n]  # attack correctly classified digits only
n = len(labels)
accuracy = lambda batch: (model(batch).argmax(1) == labels).float().mean().item()  # noqa: E731

pgd = PGD(model, 0.1, 0.01, 20)  # torchattacks' positional order: eps, alpha, steps
adversarial = pgd(images, labels)
with torch.no_grad():
    print(f"accuracy under PGD (L-inf eps 0.1, 20 steps): {accuracy(adversarial):.3f}")

cw = CW(model)  # cheap default (c = 1, 50 Adam steps); CW.thorough(model) runs the reference search
adversarial = cw(images, labels)
found = cw.last_stats.success
l2 = (adversarial - images).flatten(1).norm(dim=1)
print(f"CW-L2 found adversarial images for {int(found.sum())} of {n}; "
      f"median L2 {l2[found].median().item() if found.any() else float('nan'):.3f}")

smooth = Smooth(model, num_classes=10, sigma=sigma, generator=torch.Generator().manual_seed(0))
n0, n_draws, count = (16, 200, 4) if TINY else (100, 2000, 20)
radii = []
for image, label in zip(images[:count], labels[:count]):
    predicted, radius = smooth.certify(image, n0=n0, n=n_draws, alpha=0.001, batch_size=500)
    radii.append(radius if predicted == int(label) else 0.0)
abstained = sum(r == 0.0 for r in radii)
print(f"randomized smoothing (sigma {sigma}): mean certified L2 radius {sum(radii) / count:.3f} over {count} "
      f"images ({abstained} abstained or wrong; ABSTAIN = {ABSTAIN})")
