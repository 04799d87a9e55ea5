"""layerstore: a content-addressed store for container image layers.

Every distinct file is stored once, whatever layer or image it comes from:

    from layerstore import Store
    with Store() as store:
        images = store.import_archive("image.tar")
        store.checkout(images[0].id, "rootfs")

The public API is what this module exports: Store, every type its methods return or hand to a
callback, and errors.  The subpackages are the implementation (store/, formats/, runtimes/).
"""

from . import errors
from ._model import (CheckoutResult, DiffResult, DuResult, Entry, EntryType, GcResult,
                     HistoryEntry, Image, ImageUsage, IngestStats, InspectResult, Layer, LayerPull,
                     Mount, Problem, Progress, PullProgress, PushedBlob, PushProgress, PushResult)
from ._store import Store, default_root
from ._version import __version__

__all__ = [
    "CheckoutResult",
    "DiffResult",
    "DuResult",
    "Entry",
    "EntryType",
    "GcResult",
    "HistoryEntry",
    "Image",
    "ImageUsage",
    "IngestStats",
    "InspectResult",
    "Layer",
    "LayerPull",
    "Mount",
    "Problem",
    "Progress",
    "PullProgress",
    "PushProgress",
    "PushResult",
    "PushedBlob",
    "Store",
    "default_root",
    "errors",
    "__version__",
]
