"""layerstore: a content-addressed store for container image layers.

Every distinct file is stored once, whatever layer or image it comes from:

    from layerstore import Store
    with Store() as store:
        images = store.import_archive("image.tar")
        store.checkout(images[0].id, "rootfs")
"""

from . import errors
from ._model import (CheckoutResult, Entry, EntryType, HistoryEntry, Image, IngestStats, Layer,
                     Progress)
from ._store import Store, default_root
from ._version import __version__

__all__ = [
    "CheckoutResult",
    "Entry",
    "EntryType",
    "HistoryEntry",
    "Image",
    "IngestStats",
    "Layer",
    "Progress",
    "Store",
    "default_root",
    "errors",
    "__version__",
]
