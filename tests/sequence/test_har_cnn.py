"""A*HAR CNN (arXiv:2101.04859): no CPU default device (issue 18)."""
import torch

from honed.sequence.har_cnn import HARConvNet
from tests.device_checks import META, assert_on


def test_har_convnet_lives_on_the_default_or_given_device():
    with torch.device("meta"):
        assert_on(META, *HARConvNet(6).state_dict().values())
    assert_on(META, *HARConvNet(6, device=META).state_dict().values())
    logits = HARConvNet(6, widths=(2,) * 6, device=META).eval()(torch.rand(3, 9, 64, device=META))
    assert logits.shape == (3, 6) and logits.device == META
