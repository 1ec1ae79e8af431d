"""Deployed-form latency of experiments 19 and 28 (issue 15; GDP arXiv:2109.02220, Force
Regularization arXiv:1703.09746): the timed form computes the same function, with BN folded and
channels-last weights, the source model is left as it was, and every model gets one CPU ratio per round."""
import pytest
import torch
from torch import nn

from honed.core.errors import InputError
from honed.compress.deployed_latency import deployed, deployed_input, deployed_latency


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 3))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.train()


def test_deployed_folds_bn_keeps_the_function_and_leaves_the_source_alone():
    net = conv_bn_net()
    x = torch.randn(6, 2, 5, 5)
    ready = deployed(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ready.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in ready.parameters() if p.dim() == 4)
    assert net.training and isinstance(net[1], nn.BatchNorm2d)  # the source: same modules, same mode
    with torch.no_grad():
        assert torch.allclose(ready(deployed_input(x)), net.eval()(x), atol=1e-5)


def test_deployed_input_is_channels_last_only_for_image_batches():
    assert deployed_input(torch.randn(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    assert deployed_input(torch.randn(2, 3)).shape == (2, 3)
    assert deployed_input(torch.randn(2, 3, 4, 4), channels_last=False).is_contiguous()


def test_one_cpu_ratio_per_round_and_the_reference_is_one():
    models = {"dense": conv_bn_net(), "other": conv_bn_net()}
    table = deployed_latency(models, torch.randn(1, 2, 5, 5), rounds=4, repeats=2, batches=(1, 3))
    assert table["dense"]["speedup_b3_rounds"] == [1.0] * 4
    assert len(table["other"]["speedup_b1_rounds"]) == 4
    assert {"latency_b3_ms", "latency_b3_wall_ms", "speedup_b3", "speedup_b3_wall"} <= set(table["other"])


def test_a_missing_reference_is_refused():
    with pytest.raises(InputError):
        deployed_latency({"pruned": conv_bn_net()}, torch.randn(1, 2, 5, 5), rounds=2)


def test_kept_faster_pairs_count_only_factored_layers_and_keep_rank_and_function():
    from honed.compress.lowrank import decompose_model
    from honed.compress.deployed_latency import keep_faster_pairs
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 6)).eval()
    decomposed, plan = decompose_model(net, 1.0, ["0", "3"], ranks={"0": 2, "3": 3})
    x = torch.randn(1, 4, 4, 4)
    kept, cols, forms = keep_faster_pairs(decomposed, x, ("0", "3"), rounds=3, repeats=1, batch=8)
    assert [f["rank"] for f in forms] == [2, 3]
    assert cols["layers_decomposed"] == sum(f["form"] == "factored" for f in forms)
    assert cols["kept_factored_0"] == float(forms[0]["form"] == "factored")
    for f in forms:  # a product keeps the pair's rank
        layer = kept.get_submodule(f["name"])
        if f["form"] == "product":
            assert torch.linalg.matrix_rank(layer.weight.reshape(layer.weight.shape[0], -1)) <= f["rank"]
    with torch.no_grad():
        assert torch.allclose(kept(deployed_input(x)), decomposed(x), atol=1e-5)
