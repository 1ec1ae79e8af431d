"""Offline datasets as in-memory tensors in [0, 1]; ``create_dataset(name, **kw)`` builds one.

Every module of this package registers its datasets with ``@DATASETS.register``; importing the
package imports them all (no central list).
"""
from honed.core.registry import import_submodules
from honed.data.base import DATASETS, Batches, Dataset, Split, check_images, create_dataset, stratified_split

import_submodules(__name__)

__all__ = ["DATASETS", "Batches", "Dataset", "Split", "check_images", "create_dataset", "stratified_split"]
