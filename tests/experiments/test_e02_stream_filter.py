"""02-stream-filter experiment pieces (arXiv:2207.14386): optimizer freezing, phi features, warm start."""
import torch

from honed.experiments.e02_stream_filter import StreamFilterConfig, make_optimizer, tokenized, warm_start
from honed.models.text_encoder import TextClassifier, load_minilm


def tiny_model():
    torch.manual_seed(0)
    tokenizer, encoder = load_minilm(tiny_encoder_config=True)
    return tokenizer, TextClassifier(encoder, 3)


def test_frozen_layers_freeze_embeddings_and_bottom_layers_only():
    _, model = tiny_model()
    cfg = StreamFilterConfig(frozen_layers=1)
    optimizer, scheduler = make_optimizer(cfg, model, total_steps=4)
    encoder = model.encoder
    assert not any(p.requires_grad for p in encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in encoder.encoder.layer[1].parameters())
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[1]["lr"] == cfg.lr_head * (1 - 2 / 4)  # linear decay to 0 over 4 steps


def test_phi_marks_exactly_the_word_pieces_of_each_text():
    tokenizer, _ = tiny_model()
    cfg = StreamFilterConfig(max_seq_len=16)
    data = tokenized(tokenizer, [("good film", 1), ("bad", 0)], cfg, torch.device("cpu"))
    assert data["x"]["input_ids"].shape == (2, 16)
    for i in range(2):
        ids = data["x"]["input_ids"][i][data["x"]["attention_mask"][i].bool()]
        assert set(data["phi"][i].nonzero()[0].tolist()) == set(ids.tolist())
    assert data["y"].tolist() == [1, 0]


def test_warm_start_updates_the_model():
    tokenizer, model = tiny_model()
    cfg = StreamFilterConfig(batch_size=2, max_seq_len=8)
    warm = tokenized(tokenizer, [("a b", 0), ("c d", 1), ("e f", 2)], cfg, torch.device("cpu"))
    before = model.head.weight.detach().clone()
    warm_start(cfg, model, warm, seed=0)
    assert not torch.equal(before, model.head.weight)


def test_stall_state_flags_few_backwards_only_while_losses_sit_near_tau():
    from types import SimpleNamespace

    from honed.efficient.stream_filter import NEAR_TAU
    from honed.experiments.e02_stream_filter import stall_state

    def filt(backward, losses):
        return SimpleNamespace(backward_examples=backward, recent_losses=losses, tau=2.0, min_backward_share=0.05)

    near = [2.0 * NEAR_TAU] * 3
    stalled = stall_state(filt(103, near), backward_before=100, epoch_examples=100)
    assert stalled == {"last_epoch_backward_share": 0.03, "recent_loss_over_tau": NEAR_TAU, "stalled": 1.0}
    assert stall_state(filt(103, [0.1, 0.2, 0.3]), 100, 100)["stalled"] == 0.0  # learned: losses far below tau
    assert stall_state(filt(110, near), 100, 100)["stalled"] == 0.0  # 10% back-propagated: still training
