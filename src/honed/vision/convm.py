"""Conv-M: the compact multi-branch convolution module and network of "A Compact DNN: Approaching
GoogLeNet-Level Accuracy of Classification and Domain Adaptation" (Wu et al., CVPR 2017, arXiv:1703.04071),
plus the two baselines of its small-scale reproduction at matched parameter counts: a plain CNN and a
SqueezeNet-style net built from fire modules.

Every net takes images ``(N, C, H, W)`` (the reproduction uses C = 3, H = W = 16, values in [0, 1]) and
exposes ``features(x) -> (N, feature_dim)`` (the globally average-pooled penultimate layer, where the
domain-adaptation losses act), ``classifier`` (a Linear head) and ``forward(x) = classifier(features(x))``.

Conv-M (card step 1-2): three parallel branches, each conv -> BN -> ReLU, concatenated on channels:
(a) a regular 3x3 conv; (b) a dilated 3x3 conv (dilation 2: 5x5 receptive field with 3x3 weights);
(c) a 3x3 transposed conv, stride 1, padding 1 (size preserved). The 1x1 reductions in front of (b) and
(c) are a reconstruction (R, Inception-style) and can be switched off with ``reduction=0``.
"""
import torch
from torch import nn

from honed.core.errors import InputError, check_count

NET_NAMES = ("plain", "squeeze", "convm")


def count_parameters(model: nn.Module) -> int:
    """Compact DNN (arXiv:1703.04071) reproduction helper: the number of scalar parameters of ``model``
    (trainable or not), i.e. ``sum(p.numel() for p in model.parameters())``."""
    return sum(p.numel() for p in model.parameters())


def conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    """One branch stage: ``conv`` -> BatchNorm2d(channels) -> ReLU (the conv carries no bias)."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def check_image_batch(x: torch.Tensor, channels: int) -> None:
    """Raise InputError unless ``x`` is a finite float tensor (N, channels, H, W)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"expected images (N, {channels}, H, W), got {shape}")
    if not torch.is_floating_point(x) or not torch.isfinite(x).all():
        raise InputError("images must be a finite float tensor")


class ConvM(nn.Module):
    """Conv-M module (Compact DNN, arXiv:1703.04071): ``cat[regular 3x3, dilated 3x3, deconv 3x3]``.

    Input (N, in_channels, H, W) -> output (N, regular + dilated + deconv, H, W) for any H, W >= 1.
    ``reduction`` (R) is the width of the 1x1 conv -> BN -> ReLU in front of the dilated and deconv
    branches (0 = none, the branch reads the input directly). ``dilation`` defaults to the card's 2.
    """

    def __init__(self, in_channels: int, regular: int, dilated: int, deconv: int,
                 reduction: int = 0, dilation: int = 2) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("regular", regular), ("dilated", dilated),
                            ("deconv", deconv), ("dilation", dilation)):
            check_count(value, name)
        check_count(reduction, "reduction", minimum=0)
        self.in_channels, self.widths = in_channels, (regular, dilated, deconv)
        mid = reduction or in_channels

        def reduce() -> nn.Module:
            return conv_bn_relu(nn.Conv2d(in_channels, mid, 1, bias=False), mid) if reduction else nn.Identity()

        self.regular = conv_bn_relu(nn.Conv2d(in_channels, regular, 3, padding=1, bias=False), regular)
        self.dilated = nn.Sequential(reduce(), conv_bn_relu(
            nn.Conv2d(mid, dilated, 3, padding=dilation, dilation=dilation, bias=False), dilated))
        self.deconv = nn.Sequential(reduce(), conv_bn_relu(
            nn.ConvTranspose2d(mid, deconv, 3, stride=1, padding=1, bias=False), deconv))

    @property
    def out_channels(self) -> int:
        return sum(self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels)
        return torch.cat([self.regular(x), self.dilated(x), self.deconv(x)], dim=1)


class FireModule(nn.Module):
    """Fire module (SqueezeNet), the compressed-architecture baseline of the Compact DNN reproduction
    (arXiv:1703.04071): 1x1 squeeze -> ReLU, then ``cat[1x1 expand, 3x3 expand]`` -> ReLU (BN after each
    conv, like the other nets here). (N, in_channels, H, W) -> (N, expand1 + expand3, H, W)."""

    def __init__(self, in_channels: int, squeeze: int, expand1: int, expand3: int) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("squeeze", squeeze), ("expand1", expand1),
                            ("expand3", expand3)):
            check_count(value, name)
        self.in_channels, self.out_channels = in_channels, expand1 + expand3
        self.squeeze = conv_bn_relu(nn.Conv2d(in_channels, squeeze, 1, bias=False), squeeze)
        self.expand1 = conv_bn_relu(nn.Conv2d(squeeze, expand1, 1, bias=False), expand1)
        self.expand3 = conv_bn_relu(nn.Conv2d(squeeze, expand3, 3, padding=1, bias=False), expand3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels)
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


class CompactNet(nn.Module):
    """Stem 3x3 conv -> (2x2 max-pool -> stage) per block -> global average pool -> Linear (the network
    shape of Compact DNN, arXiv:1703.04071, card step 3). ``blocks`` are the stage modules in order (each
    with ``out_channels``). At 16x16 input the stages run at 8 and 4 px.
    Input (N, in_channels, H, W), H, W >= 2 ** stages; output logits (N, num_classes)."""

    def __init__(self, in_channels: int, stem: int, blocks: list[nn.Module], num_classes: int) -> None:
        super().__init__()
        check_count(num_classes, "num_classes", minimum=2)
        self.in_channels = in_channels
        self.stem = conv_bn_relu(nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), stem)
        layers: list[nn.Module] = []
        for block in blocks:
            layers += [nn.MaxPool2d(2), block]
        self.body = nn.Sequential(*layers)
        self.feature_dim = blocks[-1].out_channels
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim): the global average pool of the last stage."""
        check_image_batch(x, self.in_channels)
        return self.body(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class PlainConv(nn.Module):
    """Plain-CNN stage for the Compact DNN baseline (arXiv:1703.04071): 3x3 conv -> BN -> ReLU,
    (N, in_channels, H, W) -> (N, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.block = conv_bn_relu(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels)
        return self.block(x)


def convm_net(in_channels: int = 3, num_classes: int = 10, reduction: bool = True) -> CompactNet:
    """Conv-M CNN (Compact DNN, arXiv:1703.04071) for 16x16 inputs: stem 32, Conv-M stages of widths
    (32+16+16) and (64+32+32) at 8 and 4 px, 1x1 reductions to half the input width (R); ~77k
    parameters at 3 input channels."""
    widths = ((32, 16, 16), (64, 32, 32))
    blocks, c_in = [], 32
    for regular, dilated, deconv in widths:
        blocks.append(ConvM(c_in, regular, dilated, deconv, reduction=c_in // 2 if reduction else 0))
        c_in = regular + dilated + deconv
    return CompactNet(in_channels, 32, blocks, num_classes)


def squeeze_net(in_channels: int = 3, num_classes: int = 10) -> CompactNet:
    """SqueezeNet-style baseline (fire modules) for the Compact DNN reproduction (arXiv:1703.04071):
    stem 32, two fire modules per stage at 8 and 4 px (squeeze 16 / expand 32+32, then squeeze 40 /
    expand 64+64); parameter count matched to :func:`convm_net`."""
    spec = (((16, 32, 32), (16, 32, 32)), ((40, 64, 64), (40, 64, 64)))
    blocks, c_in = [], 32
    for stage in spec:
        fires = []
        for squeeze, e1, e3 in stage:
            fires.append(FireModule(c_in, squeeze, e1, e3))
            c_in = e1 + e3
        stage_module = nn.Sequential(*fires)
        stage_module.out_channels = c_in
        blocks.append(stage_module)
    return CompactNet(in_channels, 32, blocks, num_classes)


def plain_cnn(in_channels: int = 3, num_classes: int = 10) -> CompactNet:
    """Plain-CNN baseline for the Compact DNN reproduction (arXiv:1703.04071): stem 32, one 3x3 conv per
    stage (56 and 112 channels) at 8 and 4 px; parameter count matched to :func:`convm_net`."""
    widths, blocks, c_in = (56, 112), [], 32
    for width in widths:
        blocks.append(PlainConv(c_in, width))
        c_in = width
    return CompactNet(in_channels, 32, blocks, num_classes)


def create_compact_net(name: str, in_channels: int = 3, num_classes: int = 10) -> CompactNet:
    """Compact DNN (arXiv:1703.04071): build ``"plain"``, ``"squeeze"`` or ``"convm"`` (see above)."""
    builders = {"plain": plain_cnn, "squeeze": squeeze_net, "convm": convm_net}
    if name not in builders:
        raise InputError(f"net must be one of {', '.join(NET_NAMES)}, got {name!r}")
    return builders[name](in_channels=in_channels, num_classes=num_classes)
