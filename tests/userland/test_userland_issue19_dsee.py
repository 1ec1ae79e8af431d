"""Issue 19, item 4 (and item 9's NaN weights) on a user's BERT-style model built from a transformers
config: DSEE validates before it changes anything, reports what is really trained, prunes heads of
any BERT-style model and merges into a plain transformers model that reloads."""
import pytest
import torch

from honed.compress import dsee
from honed.core.errors import InputError

transformers = pytest.importorskip("transformers")


def user_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def snapshot(model):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def unchanged(model, before) -> bool:
    now = snapshot(model)
    return now.keys() == before.keys() and all(
        torch.equal(now[n][0], before[n][0]) and now[n][1] == before[n][1] for n in now)


IDS = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))


def test_refused_calls_leave_the_model_as_it_was():
    model = user_bert()
    before = snapshot(model)
    with pytest.raises(InputError, match="no nn.Linear named"):
        dsee.apply_dsee(model, targets=("q_proj",))
    with pytest.raises(InputError, match="keep_trainable"):
        dsee.apply_dsee(model, keep_trainable=("head",))
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        dsee.apply_dsee(model)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.weight[0, 0] = before[
            "bert.encoder.layer.1.attention.self.value.weight"][0][0, 0]
    assert unchanged(model, before)
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=5, omega="omp", keep_trainable=("classifier",))
    before = snapshot(model)
    with pytest.raises(InputError, match="per_layer"):
        dsee.prune_lowest_heads(model, per_layer=-1)
    with pytest.raises(InputError, match="ratio"):
        dsee.prune_unstructured(model, ratio=0.2, ratio_qv=1.5)
    with pytest.raises(InputError, match="score"):
        dsee.prune_unstructured(model, score="L2")
    assert unchanged(model, before)


def test_trainable_fraction_counts_the_parameters_that_really_require_grad():
    model = user_bert()
    pretrained = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=5, omega="omp", keep_trainable=("classifier",))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_matrix = 2 * (32 + 32) + 5
    head = sum(p.numel() for p in model.classifier.parameters())
    assert trained == 2 * 2 * per_matrix + head  # 2 layers x (Q, V) adapters + the task head
    assert dsee.trainable_fraction(model) == pytest.approx(trained / (pretrained + head))
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_heads_of_a_sequence_classifier_can_be_pruned(device):
    model = user_bert().to(device)
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=5, omega="omp")
    for m in model.modules():
        if isinstance(m, dsee.DSEELinear):
            torch.nn.init.normal_(m.lora_b)
    assert dsee.prune_lowest_heads(model, per_layer=1) == 2
    assert model(input_ids=IDS.to(device)).logits.shape == (2, 3)


def test_merge_gives_a_plain_transformers_model_that_reloads(tmp_path, device):
    model, ids = user_bert().to(device), IDS.to(device)
    dsee.apply_dsee(model, rank=2, alpha=4.0, sparse_n=5, omega="omp", keep_trainable=("classifier",))
    for m in model.modules():
        if isinstance(m, dsee.DSEELinear):
            torch.nn.init.normal_(m.lora_b, std=0.1)
            torch.nn.init.normal_(m.sparse_values, std=0.1)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    dsee.merge_dsee(model)
    assert not any(isinstance(m, dsee.DSEELinear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()  # loads on the CPU
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=IDS).logits, adapted.cpu(), atol=1e-5)
