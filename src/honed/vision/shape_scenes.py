"""Moved to :mod:`honed.data.shape_scenes` (every dataset maker lives in honed.data); this alias keeps
``honed.vision.shape_scenes`` imports working: it is the same module object."""
import sys

from honed.data import shape_scenes as _moved

sys.modules[__name__] = _moved
