"""LSTM conditional GAN (arXiv:1806.03027): the card's honest unit tests on tiny tensors."""
import pytest
import torch

from honed.core.errors import InputError
from honed.data.shape_captions import (ATTRIBUTES, TEMPLATES, caption_of, encode_captions, make_captioned_shapes,
                                       split_combinations, word_vectors)
from honed.generative.image_metrics import mse_per_image, psnr_per_image, ssim_per_image
from honed.generative.lstm_cgan import (GANINTCLSGenerator, GANINTCLSTrainer, LSTMCGANTrainer, LSTMConditionalGenerator,
                                        MatchingDiscriminator, lstm_cgan_d_loss, lstm_cgan_g_loss,
                                        lstm_cgan_parameter_groups, sample_steps, wrong_image_indices)


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return LSTMConditionalGenerator(6, hidden=8, channels=(8,)), MatchingDiscriminator(6, channels=(8,), sentence_embed=4)


def batch(b: int = 4, t: int = 5, lengths=(5, 3, 2, 4)):
    gen = torch.Generator().manual_seed(1)
    words = torch.randn(b, t, 6, generator=gen)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()
    images = torch.rand(b, 3, 8, 8, generator=gen)
    return words, mask, words.sum(1) / mask.sum(1, keepdim=True), images, images.roll(1, 0)


def test_padded_steps_contribute_zero_loss():
    g, d = tiny()
    words, mask, sent, real, wrong = batch()
    noisy = words.clone()
    noisy[mask == 0] = 100.0  # garbage in every padded step
    for fn in (lambda w: lstm_cgan_d_loss(g, d, w, mask, sent, real, wrong),
               lambda w: lstm_cgan_g_loss(g, d, w, mask, sent)):
        torch.manual_seed(0)
        a = fn(words)
        torch.manual_seed(0)
        assert torch.allclose(a, fn(noisy))


def test_generator_is_one_set_reused_at_every_step():
    g, _ = tiny()
    words, mask, *_ = batch()
    n_params = sum(p.numel() for p in g.parameters())
    g.eval()
    images, masks = g(words, mask)
    hidden = g.hidden_states(words, mask)
    again, _ = g.render(hidden[:, 2])  # the same modules render step 2 alone
    assert torch.allclose(images[:, 2], again, atol=1e-6)
    assert sum(p.numel() for p in g.parameters()) == n_params  # nothing per step
    assert 0 <= images.min() and images.max() <= 1 and 0 <= masks.min() and masks.max() <= 1


def test_optimiser_groups_hold_d_plus_mask_head_and_the_rest():
    g, d = tiny()
    d_params, g_params = lstm_cgan_parameter_groups(g, d)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(d_params) == ids(d.parameters()) | ids(g.mask_head.parameters())
    assert ids(g_params) == ids(g.lstm.parameters()) | ids(g.trunk.parameters()) | ids(g.image_head.parameters())
    assert not ids(d_params) & ids(g_params)


def test_one_d_step_then_two_g_steps_and_d_loss_reaches_only_d_and_mask_head():
    g, d = tiny()
    words, mask, sent, real, wrong = batch()
    trainer = LSTMCGANTrainer(g, d)
    before = {n: p.clone() for n, p in g.named_parameters()}
    trainer.step(words, mask, sent, real, wrong)
    assert (trainer.d_updates, trainer.g_updates) == (1, 2)
    g.zero_grad(set_to_none=True)
    lstm_cgan_d_loss(g, d, words, mask, sent, real, wrong).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in g.trunk.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.mask_head.parameters())
    assert any(not torch.equal(before[n], p) for n, p in g.named_parameters() if n.startswith("lstm"))


def test_wrong_images_never_match_their_caption():
    keys = torch.tensor([[0, 1], [0, 1], [2, 1], [0, 0], [2, 1]])
    for seed in range(20):
        idx = wrong_image_indices(keys, torch.Generator().manual_seed(seed))
        assert ((keys[idx] != keys).any(1)).all()
    with pytest.raises(InputError, match="different description"):
        wrong_image_indices(torch.tensor([3, 3, 3]))


def test_sample_steps_picks_k_real_steps_per_caption():
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]).float()
    weights = sample_steps(mask, 3, torch.Generator().manual_seed(0))
    assert weights.sum(1).tolist() == [3.0, 2.0, 3.0] and (weights <= mask).all()
    assert torch.equal(sample_steps(mask, None), mask)


def test_bad_inputs_are_refused_and_change_nothing():
    g, d = tiny()
    words, mask, sent, real, wrong = batch()
    trainer = LSTMCGANTrainer(g, d)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    with pytest.raises(InputError, match="at least one word"):
        trainer.step(words, mask * 0, sent, real, wrong)
    with pytest.raises(InputError, match="real"):
        trainer.step(words, mask, sent, real[:, :, :4], wrong)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        trainer.step(words, mask, sent, real * 3, wrong)
    assert all(torch.equal(state[k], v) for k, v in g.state_dict().items())
    with pytest.raises(InputError, match="steps_per_caption"):
        LSTMCGANTrainer(g, d, steps_per_caption=0)


def test_baseline_trains_with_the_same_schedule():
    torch.manual_seed(0)
    gen, d = GANINTCLSGenerator(6, noise_dim=3, text_embed=4, channels=(8,)), MatchingDiscriminator(6, (8,), 4)
    _, _, sent, real, wrong = batch()
    trainer = GANINTCLSTrainer(gen, d, generator=torch.Generator().manual_seed(0))
    out = trainer.step(sent, real, wrong)
    assert (trainer.d_updates, trainer.g_updates) == (1, 2) and out["d_loss"] > 0
    assert 0 <= gen(sent).min() and gen(sent).max() <= 1


def test_captions_data_holds_out_combinations_and_points_at_attribute_words():
    train, test = split_combinations(0.2, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == 120
    for a, values in enumerate(ATTRIBUTES.values()):
        assert {c[a] for c in test} == set(range(len(values)))
    caption, steps = caption_of((1, 2, 0, 3), 1)
    words = caption.split()
    assert caption == "at the bottom there is one small blue square"
    assert [words[s - 1] for s in steps] == ["square", "blue", "small", "bottom"]
    data = make_captioned_shapes(6, test, seed=0, size=16)
    assert data.images.shape == (6, 3, 16, 16) and 0 <= data.images.min() and data.images.max() <= 1
    assert len(TEMPLATES) >= 3


def test_encode_captions_refuses_empty_and_unknown_captions():
    vec = word_vectors(4)
    words, mask, sent = encode_captions(["A red circle", "one big blue square at the top"], vec)
    assert mask.sum(1).tolist() == [3.0, 7.0]  # 'a' -> 'one'
    assert torch.allclose(sent[0], (vec["one"] + vec["red"] + vec["circle"]) / 3)
    for bad, match in (([""], "empty"), (["zebra unicorn"], "no word"), ([], "non-empty")):
        with pytest.raises(InputError, match=match):
            encode_captions(bad, vec)


def test_image_metrics_oracles():
    a = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert ssim_per_image(a, a) == pytest.approx([1.0, 1.0])
    assert psnr_per_image(a, a, cap=float("inf")) == [float("inf")] * 2
    b = (a + 0.1).clamp(0, 1)
    assert mse_per_image(a, b)[0] == pytest.approx(float(((a[0] - b[0]) ** 2).mean()))
    with pytest.raises(InputError):
        mse_per_image(a, b[:1])


def test_draws_with_a_cpu_generator_land_on_the_inputs_device(device):
    """Issue 18: noise, wrong-image scores and step picks are drawn on the generator's device and moved
    (so a CPU generator gives the CPU picks on every device)."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert sample_steps(torch.ones(3, 5, device="meta"), 2, g()).device.type == "meta"
    assert GANINTCLSGenerator(6).to("meta")(torch.rand(2, 6, device="meta"), g()).device.type == "meta"
    keys = torch.tensor([0, 1, 2, 0])
    moved = wrong_image_indices(keys.to(device), g())
    assert moved.device == torch.device(device) and moved.tolist() == wrong_image_indices(keys, g()).tolist()
