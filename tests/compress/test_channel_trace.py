"""Channel groups of user-defined architectures, found with torch.fx: for each, GDP gates with exact
zeros export to a physically smaller model that computes what the gated one did, with the MACs the
bilinear model predicts; channels that cannot be removed exactly stay (and say why)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from honed.compress.channel_trace import trace_channels
from honed.compress.gdp import GDP
from honed.core.measure import count_macs
from tests.compress.user_models import DenseMobileSE, PreActNet, Shared, settle


@pytest.mark.parametrize("build", [PreActNet, DenseMobileSE, Shared])
def test_zero_gates_export_exactly_with_the_predicted_macs(build):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    model = settle(build(), x)
    dense_macs = count_macs(model, x[:1])
    gdp = GDP(model, x[:1])
    assert gdp.dense_macs == dense_macs
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in gdp.gates:
            value = torch.randn(len(gate.gate), generator=gen)
            value[torch.rand(len(value), generator=gen) < 0.4] = 0.0
            value[0] = 1.0
            gate.gate.copy_(value)
        gated = model(x)
        pruned = gdp.export().eval()
        assert torch.allclose(pruned(x), gated, atol=1e-5)
    assert gdp.hard_macs() == count_macs(pruned, x[:1]) < dense_macs


def test_groups_of_the_user_architectures():
    x = torch.rand(1, 1, 8, 8)
    pre = {g.name: g for g in trace_channels(PreActNet(), x).groups}
    stream = pre["stem"]  # the stem, both conv2 and three BatchNorms on the stream share one group
    assert {p.layer for p in stream.producers} == {"stem", "blocks.0.conv2", "blocks.1.conv2", "blocks.0.bn1",
                                                   "blocks.1.bn1", "bn"}
    assert {c.layer for c in stream.consumers} == {"blocks.0.conv1", "blocks.1.conv1", "head"}
    dense = {g.name: g for g in trace_channels(DenseMobileSE(), x).groups}
    b = dense["b"]
    assert {(p.layer, p.norm, p.positions) for p in b.producers} == {
        ("b", "bn_b", None), ("bn_cat", None, (3, 4, 5, 6)), ("dw", "bn_dw", (3, 4, 5, 6))}
    assert [(c.layer, c.positions) for c in b.consumers] == [("pw", (3, 4, 5, 6))]
    assert {p.layer for p in dense["pw"].producers} == {"pw", "se2"}  # the SE product couples them
    shared = trace_channels(Shared(), x)
    assert [g.name for g in shared.groups] == ["first", "shared"]
    assert shared.groups[1].consumers[0].features_per_channel == 16


def test_channels_that_would_not_stay_zero_or_reach_the_output_are_frozen():
    class SigmoidThenConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 3, 3), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.c(torch.sigmoid(self.b(F.relu(self.a(x)) + 1.0)))

    trace = trace_channels(SigmoidThenConv(), torch.rand(1, 1, 8, 8))
    assert "'b' reads it after 'add' of another tensor" in trace.frozen["a"]
    assert "'c' reads it after 'sigmoid'" in trace.frozen["b"]
    assert "model output" in trace.frozen["c"] and trace.groups == []


def test_tracing_leaves_modes_weights_and_statistics_as_they_were():
    model = PreActNet()
    model.blocks[0].bn1.eval()  # a frozen BN inside a training model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trace_channels(model, torch.rand(1, 1, 8, 8))
    GDP(model, torch.rand(1, 1, 8, 8))
    assert model.training and not model.blocks[0].bn1.training and model.blocks[1].bn1.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_squeezed_pooled_maps_before_a_linear_stay_prunable():
    class SqueezeHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            h = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).squeeze(-1).squeeze(-1)
            return self.fc(h.float())

    x = torch.rand(3, 1, 6, 6)
    model = settle(SqueezeHead(), x)
    gdp = GDP(model, x[:1])
    assert [g.name for g in gdp.groups] == ["conv"] and gdp.frozen == {}
    with torch.no_grad():
        gdp.gates[0].gate.copy_(torch.tensor([1.0, 0.0, 2.0, 0.0]))
        assert torch.allclose(gdp.export().eval()(x), model(x), atol=1e-6)
