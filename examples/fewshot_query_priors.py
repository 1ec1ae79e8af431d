"""Few-shot segmentation with query priors (Liu et al., arXiv:2108.05293, reconstructed) in a plain loop.

1. A prior extractor learns WITHOUT labels from base-class images: global + local InfoNCE, the local
   patches being SLIC superpixels computed once and carried through both augmented views.
2. K priors = k-means centres of its superpixel embeddings; a query's prior maps = cosines to them.
3. A few-shot head on your own frozen backbone's features segments a query from a support image and mask,
   guided by the support prototype and by the query's own prior maps; evaluate on novel classes.
``HONED_EXAMPLE_TINY=1`` shrinks it to a few seconds.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from honed.data.segmentation_scenes import FEWSHOT_SHAPES, TEXTURED_STYLE, make_segmentation_scenes
from honed.vision.prior_extractor import PriorExtractor, extractor_loss, fit_priors, prior_maps, slic_segments
from honed.vision.query_prior_fss import QueryPriorFSS, class_index, episode_counts, fewshot_miou, sample_episode

TINY = bool(os.environ.get("HONED_EXAMPLE_TINY"))
STEPS, SIZE = (3, 32) if TINY else (300, 48)
BASE, NOVEL = (1, 2, 3, 4, 5, 6), (7, 8, 9, 10)  # label values: shapes 0-5 base, 6-9 novel
torch.set_num_threads(1)

base = make_segmentation_scenes(100 if TINY else 1000, 0, TEXTURED_STYLE, FEWSHOT_SHAPES, SIZE, (1, 3), (0.15, 0.3),
                                classes=(0, 1, 2, 3, 4, 5))
test = make_segmentation_scenes(60 if TINY else 400, 1, TEXTURED_STYLE, FEWSHOT_SHAPES, SIZE, (1, 3), (0.15, 0.3))
gen = torch.Generator().manual_seed(0)

extractor = PriorExtractor()  # 1. unsupervised prior extractor (labels of `base` are not used here)
segments = slic_segments(base.x, n_segments=32)
optimizer = torch.optim.Adam(extractor.parameters(), 1e-3)
for step in range(STEPS):
    pick = torch.randint(len(base), (32,), generator=gen)
    loss = extractor_loss(extractor, base.x[pick], segments[pick], gen)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
priors = fit_priors(extractor, base.x, segments, k=16)  # 2. fixed priors, then frozen maps
base_maps, test_maps = prior_maps(extractor, base.x, priors), prior_maps(extractor, test.x, priors)


class MyBackbone(nn.Module):  # your own backbone: here trained on base-class segmentation, then frozen
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(64, len(BASE) + 1, 1)


backbone = MyBackbone()
optimizer = torch.optim.Adam(backbone.parameters(), 1e-3)
for step in range(STEPS):
    pick = torch.randint(len(base), (32,), generator=gen)
    logits = F.interpolate(backbone.head(backbone.body(base.x[pick])), size=(SIZE, SIZE), mode="bilinear")
    loss = F.cross_entropy(logits, base.y[pick])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    base_feats, test_feats = backbone.body(base.x), backbone.body(test.x)


def batch(feats, labels, maps, episodes):
    q = torch.tensor([e[1] for e in episodes])
    s = torch.tensor([e[2] for e in episodes])
    c = torch.tensor([e[0] for e in episodes])
    s_mask = (labels[s] == c[:, None, None, None]).float()
    return feats[q], feats[s], s_mask, maps[q], (labels[q] == c[:, None, None]).long(), c


head = QueryPriorFSS(feat_channels=64, num_priors=16)  # 3. the few-shot head, 1-shot base episodes
optimizer = torch.optim.Adam(head.parameters(), 1e-3)
train_index = class_index(base.y, BASE, min_pixels=20)
for step in range(STEPS):
    episodes = [sample_episode(train_index, 1, gen) for _ in range(16)]
    q, s, s_mask, r, target, _ = batch(base_feats, base.y, base_maps, episodes)
    loss = F.cross_entropy(head(q, s, s_mask, r), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
head.eval()
episodes = [sample_episode(class_index(test.y, NOVEL, min_pixels=20), 1, gen) for _ in range(50 if TINY else 500)]
with torch.no_grad():
    q, s, s_mask, r, target, classes = batch(test_feats, test.y, test_maps, episodes)
    inter, union = episode_counts(head(q, s, s_mask, r).argmax(1), target)
print(f"novel-class 1-shot mIoU: {fewshot_miou(classes, inter, union):.3f}")
