"""Moved to :mod:`honed.data.aerial_tiles` (every dataset maker lives in honed.data); this alias keeps
``honed.vision.aerial_tiles`` imports working: it is the same module object."""
import sys

from honed.data import aerial_tiles as _moved

sys.modules[__name__] = _moved
