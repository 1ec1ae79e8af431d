"""Moved to :mod:`honed.data.digit_domains` (every dataset maker lives in honed.data); this alias keeps
``honed.vision.digit_domains`` imports working: it is the same module object."""
import sys

from honed.data import digit_domains as _moved

sys.modules[__name__] = _moved
