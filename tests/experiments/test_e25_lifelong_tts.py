"""25-lifelong-tts: the per-arm metrics assembled from per-utterance MCDs, and configs refused in one line."""
import pytest

from honed.core.errors import ConfigError
from honed.experiments.e25_lifelong_tts import LifelongTTSConfig, arm_metrics


def test_arm_metrics_split_old_and_new_languages_and_measure_forgetting():
    cfg = LifelongTTSConfig(languages=("de", "nl", "es"))
    out = {"final": {"0": [3.0, 5.0], "1": [4.0, 4.0], "2": [1.0, 2.0]},
           "learned": {"0": [2.0, 2.0], "1": [4.0, 1.0], "2": [1.0, 2.0]}}
    metrics = arm_metrics(cfg, out)
    assert metrics["mcd_old"] == [3.0, 5.0, 4.0, 4.0]  # de and nl: every language but the last
    assert metrics["mcd_new"] == [1.0, 2.0] == metrics["mcd_es"]
    assert metrics["forgetting"] == [1.0, 3.0, 0.0, 3.0]  # final - right after learning it


@pytest.mark.parametrize("change", [{"languages": ("de",)}, {"languages": ("de", "de")}, {"buffer": 500},
                                    {"epochs": 0}])
def test_bad_configs_are_refused(change):
    with pytest.raises(ConfigError):
        LifelongTTSConfig(**change).validate()
