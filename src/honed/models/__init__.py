"""Small reference networks; ``create_model(name, **kw)`` builds one. Each module registers its own."""
from honed.core.registry import import_submodules
from honed.models.base import MODELS, create_model

import_submodules(__name__)

__all__ = ["MODELS", "create_model"]
