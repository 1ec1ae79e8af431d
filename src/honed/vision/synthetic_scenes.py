"""Moved to :mod:`honed.data.synthetic_scenes` (every dataset maker lives in honed.data); this alias keeps
``honed.vision.synthetic_scenes`` imports working: it is the same module object."""
import sys

from honed.data import synthetic_scenes as _moved

sys.modules[__name__] = _moved
