"""24-augmax experiment pieces: per-image outcomes on the corruption set, and the presets that run
the card's DuBIN ablation."""
import torch
from torch import nn

from honed.core.config import preset
from honed.experiments.e24_augmax import AugMaxConfig, evaluate_arm


def test_evaluate_arm_keeps_per_image_outcomes_whose_means_are_the_accuracies():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 10)).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    corrupted = {"a/1": x.flip(-1), "b/1": (x * 0.5).clamp(0, 1)}
    out = evaluate_arm(AugMaxConfig(eval_steps=1), model, x, y, corrupted, seed=0)
    with torch.no_grad():
        hits = {k: (model(v).argmax(1) == y).float() for k, v in corrupted.items()}
        clean = (model(x).argmax(1) == y).float()
    assert out["clean_acc"] == clean.tolist()
    assert torch.allclose(torch.tensor(out["corruption_mean_acc"]), (hits["a/1"] + hits["b/1"]) / 2)
    assert out["per_corruption"] == {k: sum(h.tolist()) / 5 for k, h in hits.items()}
    assert out["corruption_worst_acc"] == min(out["per_corruption"].values())
    assert len(out["augmax_mix_acc"]) == 5


def test_every_preset_runs_the_dubin_ablation():
    assert all(preset(AugMaxConfig, name).ablation for name in ("smoke", "small", "full"))
