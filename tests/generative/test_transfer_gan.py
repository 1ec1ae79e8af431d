"""Conditional transferring features (arXiv:1909.11308): the card's honest unit tests plus degrade() checks."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from honed.core.errors import InputError
from honed.generative.transfer_gan import (CTFGenerator, ProjectionDiscriminator, TransferNetwork, degrade,
                                           discriminator_loss, frechet_distance, generator_loss,
                                           gaussian_kernel1d, rotate_quadrants, split_hq_lq)


def signed_images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of the spectrum outside the lowest quarter of frequencies (per image, summed)."""
    spec = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs().square()
    h = x.shape[-1]
    mask = torch.ones(h, h, dtype=torch.bool)
    mask[h // 4:3 * h // 4, h // 4:3 * h // 4] = False
    return float(spec[..., mask].sum())


def test_ctf_shapes_match_generator_features_at_every_block():
    transfer = TransferNetwork(10, channels=12)
    gen = CTFGenerator(10, z_dim=8, channels=(20, 10, 6), ctf_channels=12)
    ctfs = transfer.encode(signed_images(5), torch.arange(5))
    assert [tuple(c.shape[-2:]) for c in ctfs] == [s[1:] for s in gen.feature_shapes()] == [(4, 4), (8, 8), (16, 16)]
    assert all(c.shape[:2] == (5, 12) for c in ctfs)
    seen = []
    for block in (gen.norm4, gen.block8, gen.block16):
        block.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    out = gen(torch.randn(5, 8), torch.arange(5), ctfs)
    assert seen == gen.feature_shapes()
    assert out.shape == (5, 1, 16, 16) and out.abs().max() < 1
    assert transfer(signed_images(5), torch.arange(5)).shape == (5, 1, 16, 16)


def test_generator_with_zero_ctf_equals_baseline_generator():
    torch.manual_seed(0)
    gen = CTFGenerator(10, z_dim=8, ctf_channels=16)
    torch.manual_seed(0)
    baseline = CTFGenerator(10, z_dim=8, ctf_channels=None)
    missing = baseline.load_state_dict(gen.state_dict(), strict=False)
    assert all(k.startswith("inject.") for k in missing.unexpected_keys) and not missing.missing_keys
    z, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 9, 9])
    zeros = [torch.zeros(6, 16, r, r) for r in (4, 8, 16)]
    out_zero, out_base = gen(z, y, zeros), baseline(z, y)
    assert torch.equal(out_zero, out_base)
    assert not torch.allclose(gen(z, y, [torch.ones_like(c) for c in zeros]), out_base)  # CTFs do act


def test_ctf_shape_mismatch_raises():
    gen = CTFGenerator(10, z_dim=8, ctf_channels=16)
    bad = [torch.zeros(2, 16, 4, 4), torch.zeros(2, 16, 4, 4), torch.zeros(2, 16, 16, 16)]
    with pytest.raises(InputError):
        gen(torch.randn(2, 8), torch.tensor([0, 1]), bad)


def test_rotation_helper_gives_exact_quarter_turns_and_labels():
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)
    rotated, labels = rotate_quadrants(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    first = x[0, 0]
    assert torch.equal(rotated[0, 0], first)
    # 90 degrees counter-clockwise: the last column becomes the top row
    assert torch.equal(rotated[2, 0], torch.tensor([[2., 5., 8.], [1., 4., 7.], [0., 3., 6.]]))
    assert torch.equal(rotated[4, 0], first.flip(0).flip(1))
    assert torch.equal(rotated[6, 0], torch.tensor([[6., 3., 0.], [7., 4., 1.], [8., 5., 2.]]))
    assert torch.equal(torch.rot90(rotated[6, 0], 1), first)  # 270 + 90 = 360 degrees


def test_spectral_norm_keeps_largest_singular_value_near_one():
    torch.manual_seed(0)
    disc = ProjectionDiscriminator(10)
    with torch.no_grad():
        disc.convs[1].parametrizations.weight.original.mul_(7.0)
    disc.train()
    for _ in range(30):  # power iterations run in training-mode forwards
        disc(signed_images(4), torch.arange(4))
    for layer in (*disc.convs, disc.linear):
        w = layer.weight.detach()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert abs(float(sigma) - 1) < 0.05


def test_rotation_loss_uses_real_images_only_in_discriminator_loss():
    torch.manual_seed(0)
    disc = ProjectionDiscriminator(10)
    real, fake, y = signed_images(4, 1), signed_images(4, 2), torch.arange(4)
    disc.eval()
    base = discriminator_loss(disc, real, y, fake, y, beta=0.0)
    with_ss = discriminator_loss(disc, real, y, fake, y, beta=1.0)
    changed_fake_ss = discriminator_loss(disc, real, y, fake.flip(-1), y, beta=1.0) - \
        discriminator_loss(disc, real, y, fake.flip(-1), y, beta=0.0)
    assert torch.allclose(with_ss - base, changed_fake_ss, atol=1e-6)  # SS term does not see the fakes
    assert float((with_ss - base).detach()) > 0
    g_loss = generator_loss(disc, fake, y, alpha=0.2) - generator_loss(disc, fake, y, alpha=0.0)
    assert float(g_loss.detach()) > 0


def test_degrade_is_deterministic_under_seed_and_in_range():
    x = signed_images(6)
    a, b, c = degrade(x, seed=3), degrade(x, seed=3), degrade(x, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1


def test_degrade_blur_and_downsampling_reduce_high_frequency_energy():
    x = signed_images(6)
    clean = degrade(x, noise_std=0.0)
    assert high_frequency_energy(clean) < 0.2 * high_frequency_energy(x)
    # noise adds energy back but the blurred image stays well below the input's high frequencies
    assert high_frequency_energy(clean) < high_frequency_energy(degrade(x, noise_std=0.1))
    assert high_frequency_energy(degrade(x)) < high_frequency_energy(x)


def test_degrade_constant_image_is_unchanged_without_noise():
    x = torch.full((2, 1, 16, 16), 0.3)
    assert torch.allclose(degrade(x, noise_std=0.0), x, atol=1e-6)
    k = gaussian_kernel1d(1.0)
    assert len(k) == 7 and abs(float(k.sum()) - 1) < 1e-6 and torch.allclose(k, k.flip(0))


def test_degrade_rejects_out_of_range_and_nan():
    with pytest.raises(InputError):
        degrade(signed_images(2) * 2)
    bad = signed_images(2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        degrade(bad)


def test_frechet_distance_self_zero_and_monotone_in_noise():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 6))
    assert frechet_distance(feats, feats) < 1e-6
    values = [frechet_distance(feats, feats + rng.normal(size=feats.shape) * s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_frechet_distance_oracle_for_shifted_gaussians():
    # identical covariances: FD = |mu_a - mu_b|^2 exactly
    feats = np.random.default_rng(1).normal(size=(300, 3))
    assert abs(frechet_distance(feats, feats + np.array([1.0, 2.0, 0.0])) - 5.0) < 1e-6


@settings(max_examples=15, deadline=None)
@given(st.integers(10, 60), st.floats(0.3, 0.9), st.floats(0.0, 1.0), st.integers(0, 100))
def test_hq_removal_split_is_disjoint_and_lq_comes_from_removed(per_class, keep, lq_share, seed):
    labels = torch.arange(3).repeat_interleave(per_class)
    lq_fraction = lq_share * (1 - keep)
    split = split_hq_lq(labels, keep, lq_fraction, seed)
    kept, removed, lq = (set(t.tolist()) for t in (split.kept, split.removed, split.lq))
    assert kept.isdisjoint(removed) and kept | removed == set(range(len(labels)))
    assert lq <= removed and lq.isdisjoint(kept)
    for c in range(3):
        assert int((labels[split.kept] == c).sum()) == round(keep * per_class)


def test_experiment_never_trains_on_removed_images_undegraded():
    from dataclasses import replace

    from honed.experiments.e14_transfer_gan import TransferGanConfig, load_digits_signed, prepare

    cfg = replace(TransferGanConfig.smoke(), transfer_steps=1)
    data = prepare(cfg, seed=0)
    x, y, _, _ = load_digits_signed()
    split = split_hq_lq(y, cfg.keep_fraction, cfg.lq_fraction, 0)
    removed = x[split.removed].flatten(1)
    for key in ("kept", "kept+lq", "lq"):
        train = data[key][0].flatten(1)
        exact = (torch.cdist(train, removed) < 1e-6).any(1)
        # a removed image may equal a kept one only if the dataset itself holds duplicates
        dupes = (torch.cdist(x[split.kept].flatten(1), removed) < 1e-6).any(1).sum()
        assert int(exact.sum()) <= int(dupes) if key != "lq" else int(exact.sum()) == 0
    assert torch.equal(data["lq"][0], degrade(x[split.lq], seed=101))


def test_frechet_distance_equals_a_plain_scipy_reference():
    from scipy import linalg

    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    half = linalg.sqrtm(ca).real  # tr((Ca Cb)^(1/2)) = tr((Ca^(1/2) Cb Ca^(1/2))^(1/2)), a symmetric PSD root
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb) - 2 * np.trace(linalg.sqrtm(half @ cb @ half).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)


def test_gaussian_kernel_has_no_cpu_default():
    """Issue 18: built under ``with torch.device(...)`` the kernel lives there."""
    from honed.generative.transfer_gan import gaussian_kernel1d
    with torch.device("meta"):
        assert gaussian_kernel1d(1.0).device == torch.device("meta")
