"""Pool, target and finetuning of 01-mpc-data-selection (SelectFormer, arXiv:2310.02373): the plaintext
side of the experiment (D_boot and the imbalanced, near-duplicated pool from the digits training split;
the model owner's Transformer target, pretrained and adapted; the finetune every selection gets alike; the
validation-only setting check). Split out of honed.experiments.e01_mpc_data_selection, which imports it."""
import copy

import torch
import torch.nn.functional as F

from honed.core.loop import correct_per_example
from honed.data import create_dataset
from honed.data.base import stratified_split
from honed.private.proxy_selection import TinyTransformer, entropy_from_logits, secure_topk_standin


def fit_adam(model, x, y, epochs, lr, seed, teacher=None, kd_weight=0.0, batch=64):
    """Adam minibatch training (CE, plus KD to ``teacher``'s logits when given)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    soft = None if teacher is None else teacher(x).detach().softmax(-1)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if soft is not None and kd_weight > 0:
                kd = F.kl_div(logits.log_softmax(-1), soft[idx], reduction="batchmean")
                loss = (1 - kd_weight) * loss + kd_weight * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def entropy_scorer(model):
    """x (n, 64) -> predictive entropy (n,) of ``model``."""
    return lambda x: entropy_from_logits(model(x))


def build_pool(train, cfg, seed):
    """D_boot (boot_per_class per class) and an imbalanced pool with near-duplicates (x (N, 64), y)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=gen)
    x, y = train.x[perm], train.y[perm]
    boot = torch.cat([torch.nonzero(y == c).flatten()[:cfg.boot_per_class] for c in range(10)])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[boot] = False
    rx, ry = x[rest], y[rest]
    n_unique = round(cfg.pool_size * (1 - cfg.duplicate_fraction))
    weights = torch.tensor([cfg.imbalance_ratio ** (c / 9) for c in range(10)])
    counts = (weights / weights.sum() * n_unique).round().long()
    keep = torch.cat([torch.nonzero(ry == c).flatten()[:int(counts[c])] for c in range(10)])
    ux, uy = rx[keep], ry[keep]
    src = torch.randint(0, len(ux), (cfg.pool_size - len(ux),), generator=gen)
    shifts = torch.randint(-1, 2, (len(src), 2), generator=gen)
    dup = torch.stack([torch.roll(ux[i].view(8, 8), tuple(s.tolist()), (0, 1)).flatten() for i, s in zip(src, shifts)])
    dup = (dup + 0.05 * torch.randn(dup.shape, generator=gen)).clamp(0, 1)
    pool_x, pool_y = torch.cat([ux, dup]), torch.cat([uy, uy[src]])
    return (x[boot], y[boot]), (pool_x, pool_y)


def train_target(cfg, seed, pretrain, boot):
    """The model owner's target: pretrained on ``pretrain`` (a Split disjoint from the pool), adapted on
    D_boot (R); returned in eval mode."""
    target = fit_adam(TinyTransformer(n_blocks=cfg.target_blocks), pretrain.x, pretrain.y, cfg.pretrain_epochs, cfg.lr,
                  seed)
    return fit_adam(target, boot[0], boot[1], cfg.adapt_epochs, cfg.lr, seed + 1).eval()


def finetune_on_selection(cfg, seed, target, boot, pool, idx):
    """A copy of the target finetuned on D_boot U pool[idx], identically for every selection."""
    model = copy.deepcopy(target).train()
    x, y = torch.cat([boot[0], pool[0][idx]]), torch.cat([boot[1], pool[1][idx]])
    return fit_adam(model, x, y, cfg.finetune_epochs, cfg.lr, seed + 2).eval()


def validation_oracle_gap(cfg, seeds=None, val_fraction: float = 0.28) -> dict[str, list[float]]:
    """SelectFormer (arXiv:2310.02373) setting check on validation data only: per seed, the accuracy on a
    split held out of the training split (stratified, ``val_fraction``) of the target finetuned on D_boot
    + Oracle's top-B vs + a random B, with D_boot and the pool drawn from the rest of the training split.
    The test split is never read. Returns {"oracle": [...], "random": [...], "gap": [...]} (per seed)."""
    data = create_dataset("digits", flat=True)
    rest, _, val = stratified_split(data.train.x, data.train.y, (1 - val_fraction, 0.0, val_fraction), seed=123)
    out: dict[str, list[float]] = {"oracle": [], "random": []}
    for seed in seeds if seeds is not None else cfg.seeds:
        torch.manual_seed(seed)
        boot, pool = build_pool(rest, cfg, seed)
        target = train_target(cfg, seed, data.val, boot)
        with torch.no_grad():
            oracle = secure_topk_standin(entropy_from_logits(target(pool[0])), cfg.budget)
        random = torch.randperm(len(pool[0]), generator=torch.Generator().manual_seed(seed))[:cfg.budget]
        for arm, idx in (("oracle", oracle), ("random", random)):
            correct = correct_per_example(finetune_on_selection(cfg, seed, target, boot, pool, idx), val.x, val.y)
            out[arm].append(sum(correct) / len(correct))
    out["gap"] = [o - r for o, r in zip(out["oracle"], out["random"])]
    return out
