"""17-mat experiment pieces: per-image outcomes under every attack strength, whose means are the
card's accuracy-vs-eps metrics."""
import torch
from torch import nn

from honed.experiments.e17_mat import MATConfig, arm_metrics, attack_arm


def test_arm_metrics_keep_per_image_outcomes_and_the_grid_worst_as_a_number():
    cfg = MATConfig(strengths=(0.1, 0.3), grid=(0.0, 0.1, 0.3), pgd_eps=(0.1, 0.3))
    part = {"fgsm": [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], "pgd": [[1, 0, 0, 0], [0, 0, 0, 0]],
            "train_s": 1.0, "params": 10, "attack_s": 0.5}
    m = arm_metrics(cfg, part)
    assert m["clean_acc"] == [1, 1, 1, 0]
    assert m["fgsm_grid_mean"] == [1.0, 2 / 3, 1 / 3, 0.0]  # fraction of grid strengths each image survives
    assert m["fgsm_grid_worst"] == 0.25 and m["pgd_mean"] == [0.5, 0.0, 0.0, 0.0]
    assert m["fgsm_e0.3"] == [1, 0, 0, 0] and m["pgd_e0.1"] == [1, 0, 0, 0]


def test_attack_arm_scores_clean_images_at_eps_zero_and_leaves_eval_mode_flags():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
    cfg = MATConfig(strengths=(0.1,), grid=(0.0, 0.1), pgd_eps=(0.1,), pgd_steps=2)
    part = attack_arm(cfg, model, x, y, seed=0)
    assert all(m.training for m in model.modules())  # the attacks ran in eval mode and restored the flags
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().tolist()
    assert part["fgsm"][0] == clean and len(part["pgd"][0]) == 6
