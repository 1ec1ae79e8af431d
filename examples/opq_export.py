"""One-shot pruning-quantisation (OPQ, arXiv:2205.11141) of your own CNN, fine-tuned in your own loop,
then written as a packed file and loaded back into a plain model.

opq_plan decides, once and from the trained weights only, each layer's pruning ratio, mask, bit-width
and codebook; attach_quantizers makes the forward pass use the compressed weights while your
optimizer trains the latent ones; export_compressed + write_packed store codes, codebooks and the
relative index; load_packed decodes them into a fresh instance of your model.

    python examples/opq_export.py                 # under a minute on one CPU core
    HONED_EXAMPLE_TINY=1 python examples/opq_export.py        # a few seconds
"""
import io
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from honed.compress.opq import attach_quantizers, export_compressed, opq_plan
from honed.compress.packed_format import load_packed, write_packed

TINY = os.environ.get("HONED_EXAMPLE_TINY") == "1"
DENSE_STEPS, FINETUNE_STEPS = (40, 10) if TINY else (800, 200)


class MyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def digits():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def train(model, x, y, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    (x, y), (x_test, y_test) = digits()
    model = MyCNN()
    train(model, x, y, DENSE_STEPS, lr=1e-3)
    dense_acc = accuracy(model, x_test, y_test)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    dense_bytes = buffer.tell()

    plans = opq_plan(model, sparsity=0.9, avg_bits=3.0)  # one shot, from the trained weights
    attach_quantizers(model, plans)
    one_shot_acc = accuracy(model, x_test, y_test)
    train(model, x, y, FINETUNE_STEPS, lr=1e-4)  # masks and codebooks stay fixed
    finetuned_acc = accuracy(model, x_test, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        layers, dense = export_compressed(model)
        packed_bytes = write_packed(Path(tmp) / "model.hpq", layers, dense)
        restored = load_packed(MyCNN(), Path(tmp) / "model.hpq")
    print(f"dense fp32       : acc {dense_acc:.3f}  {dense_bytes} bytes (torch.save)")
    print(f"OPQ one-shot     : acc {one_shot_acc:.3f}  bits per layer {[p.bits for p in plans.values()]}")
    print(f"OPQ fine-tuned   : acc {finetuned_acc:.3f}")
    print(f"packed, reloaded : acc {accuracy(restored, x_test, y_test):.3f}  {packed_bytes} bytes "
          f"({dense_bytes / packed_bytes:.1f}x smaller)")


if __name__ == "__main__":
    main()
