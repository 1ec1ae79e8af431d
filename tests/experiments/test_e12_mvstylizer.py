"""12-mvstylizer: configs that cannot run are refused in one line."""
import pytest

from honed.core.errors import ConfigError
from honed.experiments.e12_mvstylizer import MVStylizerConfig


@pytest.mark.parametrize("change", [{"test_domains": ("nowhere",)}, {"style": "shapes"}, {"fed_edge_clips": (1,)},
                                    {"frames": 1}, {"timing_size": 128}, {"crop": 512}, {"upscale_scales": (0.5,)}])
def test_bad_configs_are_refused(change):
    with pytest.raises(ConfigError):
        MVStylizerConfig(**change).validate()


def test_presets_are_valid():
    for preset in (MVStylizerConfig.smoke(), MVStylizerConfig(), MVStylizerConfig.full()):
        preset.validate()
