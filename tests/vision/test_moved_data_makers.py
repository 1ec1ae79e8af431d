"""The five data makers moved from honed.vision to honed.data: the old import paths give the same
module objects (a user's `from honed.vision.shape_scenes import ...` keeps working)."""
import importlib

import pytest

MOVED = ["shape_scenes", "synthetic_scenes", "aerial_tiles", "digit_domains", "instance_scenes"]


@pytest.mark.parametrize("name", MOVED)
def test_old_vision_path_is_the_data_module(name):
    old = importlib.import_module(f"honed.vision.{name}")
    assert old is importlib.import_module(f"honed.data.{name}")
    assert old.__name__ == f"honed.data.{name}"
