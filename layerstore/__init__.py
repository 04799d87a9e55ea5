"""layerstore: a content-addressed store for container image layers.

Every distinct file is stored once, whatever layer or image it comes from:

    from layerstore import Store
    with Store() as store:
        images = store.import_archive("image.tar")
        store.checkout(images[0].id, "rootfs")

The public API is what this module exports: Store, every type its methods return or hand to a
callback, and errors.  The subpackages are the implementation (store/, formats/, runtimes/).
"""

from typing import TYPE_CHECKING

from . import errors
from ._version import __version__

if TYPE_CHECKING:   # imported on first use, by __getattr__ below
    from ._model import (CheckoutResult, DiffResult, DuResult, Entry, EntryType, GcResult,
                         HistoryEntry, Image, ImageUsage, IngestStats, InspectResult, Layer,
                         LayerPull, Mount, Problem, Progress, PullProgress, PushedBlob,
                         PushProgress, PushResult)
    from ._store import Store, default_root

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


def __getattr__(name: str):
    """Store and the types, imported when first asked for (PEP 562): the command line's
    --help, and its commands that need little of the store, do not load all of it."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _model, _store
    value = getattr(_store if name in ("Store", "default_root") else _model, name)
    globals()[name] = value
    return value
