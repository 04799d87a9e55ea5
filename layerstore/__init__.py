"""layerstore: a content-addressed store for container image layers.

Every distinct file is stored once, whatever layer or image it comes from.
"""

from . import errors
from ._model import Entry, EntryType, IngestStats
from ._version import __version__

__all__ = ["Entry", "EntryType", "IngestStats", "errors", "__version__"]
