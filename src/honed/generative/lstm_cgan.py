"""LSTM conditional GAN (Ouyang, Zhang, Ma, Agam, "Generating Image Sequence from Description with LSTM
Conditional GAN", ICPR 2018, arXiv:1806.03027) and the GAN-INT-CLS baseline it is compared with.

An LSTM reads the caption's word vectors; after every word t a shared DCGAN-style generator (no noise
input) renders an image xhat_t and a soft mask M_t from the masked hidden state h_t * m_t. A
matching-aware discriminator D(image, s) sees the full-sentence vector s. Losses (sigmoid BCE), averaged
over the batch and over the real-word steps only (word mask m_t):

    L_D = BCE(D(x * M_t, s), 1) + BCE(D(x_wrong, s), 0) + BCE(D(xhat_t, s), 0)
    L_G = BCE(D(xhat_t, s), 1)

The D optimiser owns D AND the mask head; the G optimiser owns the LSTM, the generator trunk and the
image head (:func:`lstm_cgan_parameter_groups`). :class:`LSTMCGANTrainer` takes one D step then
``g_steps`` (2) G steps per batch. Images are (B, 3, S, S) in [0, 1] with S = 4 * 2**len(channels);
word vectors (B, T, D), word mask (B, T) in {0, 1} (real words first), sentence vectors (B, Ds).
"""
import torch
import torch.nn.functional as F
from torch import nn

from honed.core.errors import InputError
from honed.core.seed import draw_device


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases, BN scale N(1, 0.02) (the reference's initialisation)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GeneratorTrunk(nn.Module):
    """Code (B, code_dim) -> linear to 4x4 x channels[0] -> BN-ReLU -> (deconv 5x5 s2 -> BN-ReLU) per
    further channel count: features (B, channels[-1], S/2, S/2) (LSTM cGAN, arXiv:1806.03027, step 2)."""

    def __init__(self, code_dim: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.project = nn.Linear(code_dim, 16 * channels[0])
        self.bn0 = nn.BatchNorm2d(channels[0])
        self.ups = nn.Sequential(*[nn.Sequential(_deconv(a, b), nn.BatchNorm2d(b), nn.ReLU())
                                   for a, b in zip(channels[:-1], channels[1:])])
        self.channels = channels

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.project(code).view(len(code), self.channels[0], 4, 4)
        return self.ups(F.relu(self.bn0(x)))


class LSTMConditionalGenerator(nn.Module):
    """LSTM cGAN generator (arXiv:1806.03027): word vectors (B, T, word_dim) and word mask (B, T) ->
    images (B, T, 3, S, S) and soft masks (B, T, 1, S, S), both in [0, 1], one per step.
    ``channels`` = trunk widths (card default scaled down: (64, 32) gives S = 16)."""

    def __init__(self, word_dim: int, hidden: int = 64, channels: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        if not channels or hidden < 1 or word_dim < 1:
            raise InputError("word_dim, hidden and channels must be positive and non-empty")
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True)
        with torch.no_grad():  # forget-gate bias 0, as the reference sets it
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_hh_l0.zero_()
        self.trunk = GeneratorTrunk(hidden, channels)
        self.image_head = _deconv(channels[-1], 3)
        self.mask_head = _deconv(channels[-1], 1)
        self.word_dim, self.image_size = word_dim, 4 * 2 ** len(channels)
        dcgan_init(self.trunk)
        dcgan_init(self.image_head)
        dcgan_init(self.mask_head)

    def check_words(self, words: torch.Tensor, mask: torch.Tensor) -> None:
        if words.dim() != 3 or words.shape[-1] != self.word_dim or mask.shape != words.shape[:2]:
            raise InputError(f"words must be (B, T, {self.word_dim}) and mask (B, T); got {tuple(words.shape)} "
                             f"and {tuple(mask.shape)}")
        if not torch.isfinite(words).all() or not ((mask == 0) | (mask == 1)).all():
            raise InputError("words must be finite and the word mask 0/1")
        if (mask.sum(1) < 1).any():
            raise InputError("every caption needs at least one word (a row of the word mask is all zero)")

    def hidden_states(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h_t * m_t for every step: (B, T, hidden)."""
        self.check_words(words, mask)
        return self.lstm(words)[0] * mask.unsqueeze(-1)

    def render(self, hidden: torch.Tensor, masks: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states (N, hidden) -> images (N, 3, S, S) and soft masks (N, 1, S, S) (None if not masks)."""
        features = self.trunk(hidden)
        image = torch.tanh(self.image_head(features)) / 2 + 0.5
        return image, (torch.tanh(self.mask_head(features)) / 2 + 0.5) if masks else None

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(words, mask)
        b, t = mask.shape
        image, soft_mask = self.render(hidden.reshape(b * t, -1))
        s = self.image_size
        return image.view(b, t, 3, s, s), soft_mask.view(b, t, 1, s, s)

    @torch.no_grad()
    def final_image(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image after each caption's last real word (inference, card step 7): (B, 3, S, S)."""
        images, _ = self(words, mask)
        last = mask.sum(1).long() - 1
        return images[torch.arange(len(last), device=last.device), last]


class MatchingDiscriminator(nn.Module):
    """Matching-aware D(image, s) (arXiv:1806.03027 step 3): 5x5 stride-2 convs (LeakyReLU 0.2, BN after
    the first) down to 4x4; s -> linear ``sentence_embed`` + LeakyReLU, tiled 4x4 and concatenated ->
    1x1 conv + BN + LeakyReLU -> linear -> logit (B,). Image (B, 3, S, S) in [0, 1], S = 4 * 2**len(channels)."""

    def __init__(self, sentence_dim: int, channels: tuple[int, ...] = (32, 64), sentence_embed: int = 32) -> None:
        super().__init__()
        layers, cin = [], 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, c, 5, stride=2, padding=2)] + ([nn.BatchNorm2d(c)] if i else [])
            layers += [nn.LeakyReLU(0.2)]
            cin = c
        self.convs = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(sentence_dim, sentence_embed), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(nn.Conv2d(cin + sentence_embed, cin, 1), nn.BatchNorm2d(cin), nn.LeakyReLU(0.2))
        self.logit = nn.Linear(16 * cin, 1)
        self.image_size = 4 * 2 ** len(channels)
        dcgan_init(self)

    def forward(self, image: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1:] != (3, self.image_size, self.image_size) or len(sentence) != len(image):
            raise InputError(f"D expects images (B, 3, {self.image_size}, {self.image_size}) and sentences (B, D); got "
                             f"{tuple(image.shape)} and {tuple(sentence.shape)}")
        features = self.convs(image)
        text = self.embed(sentence)[:, :, None, None].expand(-1, -1, 4, 4)
        return self.logit(self.joint(torch.cat([features, text], 1)).flatten(1)).squeeze(1)


class GANINTCLSGenerator(nn.Module):
    """GAN-INT-CLS baseline generator (Reed et al. 2016, as compared in arXiv:1806.03027): G(z, phi(s)),
    phi = linear + LeakyReLU, the same trunk and image head as the LSTM cGAN, no mask, no LSTM.
    Sentence (B, Ds) -> image (B, 3, S, S) in [0, 1]; z ~ N(0, 1) of ``noise_dim`` drawn from ``generator``."""

    def __init__(self, sentence_dim: int, noise_dim: int = 16, text_embed: int = 32,
                 channels: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(sentence_dim, text_embed), nn.LeakyReLU(0.2))
        self.trunk = GeneratorTrunk(noise_dim + text_embed, channels)
        self.image_head = _deconv(channels[-1], 3)
        self.noise_dim, self.image_size = noise_dim, 4 * 2 ** len(channels)
        dcgan_init(self)

    def forward(self, sentence: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(sentence), self.noise_dim, generator=generator,
                        device=draw_device(generator, sentence.device)).to(sentence.device)
        return torch.tanh(self.image_head(self.trunk(torch.cat([z, self.phi(sentence)], 1)))) / 2 + 0.5


def lstm_cgan_parameter_groups(gen: LSTMConditionalGenerator, disc: nn.Module) -> tuple[list, list]:
    """(D-optimiser parameters = D + mask head, G-optimiser parameters = LSTM + trunk + image head)."""
    d_params = list(disc.parameters()) + list(gen.mask_head.parameters())
    mask_ids = {id(p) for p in gen.mask_head.parameters()}
    return d_params, [p for p in gen.parameters() if id(p) not in mask_ids]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")


def wrong_image_indices(keys: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For every row i of ``keys`` ((B,) or (B, K): what a caption describes, e.g. attribute indices) a
    random index j with keys[j] != keys[i]: the "wrong" image shown to D with caption i (matching-aware
    loss). Raises when a row has no mismatching partner in the batch."""
    keys = keys.view(len(keys), -1)
    differs = (keys[:, None, :] != keys[None, :, :]).any(-1)
    if not differs.any(1).all():
        raise InputError("a batch row has no example with a different description: no wrong image for it")
    scores = torch.rand(differs.shape, generator=generator, device=draw_device(generator, keys.device))
    scores = scores.to(keys.device) + differs.float()
    return scores.argmax(1)


def sample_steps(mask: torch.Tensor, k: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Step weights (B, T): the word mask itself (k None: every real-word step, the card), or min(k, length)
    real-word steps per caption drawn uniformly without replacement (an unbiased subsample of the masked
    mean that renders k images per caption instead of T)."""
    if k is None:
        return mask
    scores = torch.rand(mask.shape, generator=generator, device=draw_device(generator, mask.device))
    scores = scores.to(mask.device) + 2 * mask
    rank = scores.argsort(1, descending=True).argsort(1)
    return mask * (rank < k).to(mask.dtype)


def _step_terms(gen: LSTMConditionalGenerator, words: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states, example index and weight of the weighted real-word steps (weights default: mask)."""
    flat = (mask if weights is None else weights * mask).flatten()
    picked = flat.nonzero().squeeze(1)
    hidden = gen.hidden_states(words, mask).flatten(0, 1)[picked]
    return hidden, picked // mask.shape[1], flat[picked]


def lstm_cgan_d_loss(gen: LSTMConditionalGenerator, disc: nn.Module, words: torch.Tensor, mask: torch.Tensor,
                     sentence: torch.Tensor, real: torch.Tensor, wrong: torch.Tensor, use_mask: bool = True,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_D of the card (step 4), averaged over real-word steps (``weights``: a subsample of them, see
    :func:`sample_steps`); padded steps are never rendered. Gradients reach D and the mask head only (the
    LSTM, trunk and image head run without grad). ``use_mask=False`` is the no-mask ablation."""
    with torch.no_grad():
        hidden, example, weight = _step_terms(gen, words, mask, weights)
        features = gen.trunk(hidden)
        fake = torch.tanh(gen.image_head(features)) / 2 + 0.5
    text, shown = sentence[example], real[example]
    if use_mask:
        shown = shown * (torch.tanh(gen.mask_head(features)) / 2 + 0.5)
    per_step = _bce(disc(shown, text), 1.0) + _bce(disc(fake, text), 0.0) + _bce(disc(wrong, sentence), 0.0)[example]
    return (per_step * weight).sum() / weight.sum()


def lstm_cgan_g_loss(gen: LSTMConditionalGenerator, disc: nn.Module, words: torch.Tensor, mask: torch.Tensor,
                     sentence: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = BCE(D(xhat_t, s), 1), averaged over real-word steps (D conditions on the full sentence)."""
    hidden, example, weight = _step_terms(gen, words, mask, weights)
    fake, _ = gen.render(hidden, masks=False)
    return (_bce(disc(fake, sentence[example]), 1.0) * weight).sum() / weight.sum()


def gan_int_cls_d_loss(gen: GANINTCLSGenerator, disc: nn.Module, sentence: torch.Tensor, real: torch.Tensor,
                       wrong: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same matching-aware D loss for the baseline: real 1, wrong image 0, generated 0."""
    with torch.no_grad():
        fake = gen(sentence, generator)
    terms = _bce(disc(real, sentence), 1.0) + _bce(disc(wrong, sentence), 0.0) + _bce(disc(fake, sentence), 0.0)
    return terms.mean()


def gan_int_cls_g_loss(gen: GANINTCLSGenerator, disc: nn.Module, sentence: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    return _bce(disc(gen(sentence, generator), sentence), 1.0).mean()


def check_images(name: str, images: torch.Tensor, size: int, batch: int) -> None:
    if images.shape != (batch, 3, size, size) or not torch.isfinite(images).all():
        raise InputError(f"{name} must be finite ({batch}, 3, {size}, {size}) images, got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise InputError(f"{name} must lie in [0, 1]")


class AlternatingGANTrainer:
    """Adam (lr 2e-4, beta1 0.5) on two parameter groups; :meth:`alternate` takes one D step, then
    ``g_steps`` G steps (card step 6). Subclasses give the losses."""

    def __init__(self, d_params: list, g_params: list, lr: float = 2e-4, beta1: float = 0.5, g_steps: int = 2) -> None:
        if not (lr > 0 and 0 <= beta1 < 1) or isinstance(g_steps, bool) or not isinstance(g_steps, int) or g_steps < 1:
            raise InputError(f"need lr > 0, beta1 in [0, 1) and an integer g_steps >= 1; got {lr}, {beta1}, {g_steps}")
        self.d_opt = torch.optim.Adam(d_params, lr=lr, betas=(beta1, 0.999))
        self.g_opt = torch.optim.Adam(g_params, lr=lr, betas=(beta1, 0.999))
        self.g_steps, self.d_updates, self.g_updates = g_steps, 0, 0

    def alternate(self, d_loss_fn, g_loss_fn) -> dict[str, float]:
        self.d_opt.zero_grad(set_to_none=True)
        d_loss = d_loss_fn()
        d_loss.backward()
        self.d_opt.step()
        self.d_updates += 1
        for _ in range(self.g_steps):
            self.g_opt.zero_grad(set_to_none=True)
            g_loss = g_loss_fn()
            g_loss.backward()
            self.g_opt.step()
            self.g_updates += 1
        return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}


class LSTMCGANTrainer(AlternatingGANTrainer):
    """LSTM cGAN training (arXiv:1806.03027): ``step(words, mask, sentence, real, wrong)`` = one D step
    (D + mask head) and ``g_steps`` G steps (LSTM + trunk + image head). Inputs are checked before any
    parameter changes. ``disc`` is any module D(images (N, 3, S, S), sentences (N, Ds)) -> logits (N,)."""

    def __init__(self, gen: LSTMConditionalGenerator, disc: MatchingDiscriminator, lr: float = 2e-4,
                 beta1: float = 0.5, g_steps: int = 2, use_mask: bool = True, steps_per_caption: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if steps_per_caption is not None and (isinstance(steps_per_caption, bool) or steps_per_caption < 1):
            raise InputError(f"steps_per_caption must be None (every word) or an integer >= 1, got {steps_per_caption}")
        if getattr(disc, "image_size", gen.image_size) != gen.image_size:
            raise InputError(f"generator makes {gen.image_size}px images but D takes {disc.image_size}px")
        super().__init__(*lstm_cgan_parameter_groups(gen, disc), lr=lr, beta1=beta1, g_steps=g_steps)
        self.gen, self.disc, self.use_mask = gen, disc, use_mask
        self.steps_per_caption, self.generator = steps_per_caption, generator

    def step(self, words: torch.Tensor, mask: torch.Tensor, sentence: torch.Tensor, real: torch.Tensor,
             wrong: torch.Tensor) -> dict[str, float]:
        self.gen.check_words(words, mask)
        for name, images in (("real", real), ("wrong", wrong)):
            check_images(name, images, self.gen.image_size, len(words))
        g, d, k, z = self.gen, self.disc, self.steps_per_caption, self.generator
        return self.alternate(
            lambda: lstm_cgan_d_loss(g, d, words, mask, sentence, real, wrong, self.use_mask, sample_steps(mask, k, z)),
            lambda: lstm_cgan_g_loss(g, d, words, mask, sentence, sample_steps(mask, k, z)))


class GANINTCLSTrainer(AlternatingGANTrainer):
    """The GAN-INT-CLS baseline trained like the LSTM cGAN: same D, loss form, optimiser and 1 D : 2 G."""

    def __init__(self, gen: GANINTCLSGenerator, disc: MatchingDiscriminator, lr: float = 2e-4, beta1: float = 0.5,
                 g_steps: int = 2, generator: torch.Generator | None = None) -> None:
        if getattr(disc, "image_size", gen.image_size) != gen.image_size:
            raise InputError(f"generator makes {gen.image_size}px images but D takes {disc.image_size}px")
        super().__init__(list(disc.parameters()), list(gen.parameters()), lr=lr, beta1=beta1, g_steps=g_steps)
        self.gen, self.disc, self.noise = gen, disc, generator

    def step(self, sentence: torch.Tensor, real: torch.Tensor, wrong: torch.Tensor) -> dict[str, float]:
        for name, images in (("real", real), ("wrong", wrong)):
            check_images(name, images, self.gen.image_size, len(sentence))
        g, d, z = self.gen, self.disc, self.noise
        return self.alternate(lambda: gan_int_cls_d_loss(g, d, sentence, real, wrong, z),
                              lambda: gan_int_cls_g_loss(g, d, sentence, z))
