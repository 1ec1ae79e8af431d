"""Issue 19, item 8: a bad n_critic is named n_critic, not n_d."""
import pytest

from honed.core.errors import InputError
from honed.generative.adaptive_updates import LossChangeRatioScheduler


@pytest.mark.parametrize("n_critic", [0, -2, 2.5, "5"])
def test_bad_n_critic_is_named_n_critic(n_critic):
    with pytest.raises(InputError, match="n_critic") as info:
        LossChangeRatioScheduler(n_critic=n_critic)
    assert "n_d" not in str(info.value)
