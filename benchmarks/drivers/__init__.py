"""Storage-driver contestants for the benchmark harness.

Each driver stores images its own way under a work directory and answers the same questions:
import an image (or one layer), check it out, remove it, report disk use.  Adding a contestant
is one module here plus its name in DRIVERS.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from harness import BenchImage, disk_usage, fresh_dir


class Unsupported(Exception):
    """This driver cannot do that operation (the harness leaves the cell empty)."""


class Driver:
    name = "?"

    def __init__(self, workdir: Path) -> None:
        self.workdir = fresh_dir(workdir)
        self.generation = 0
        self.reset()

    @classmethod
    def missing(cls) -> str | None:
        """Why this driver cannot run here (a tool not installed), or None."""
        return None

    def reset(self) -> None:
        """Starts over with empty storage in a new directory.  Old ones stay until cleanup():
        deleting thousands of files right before a timed run slows the next creations (ext4
        skips recently freed inodes), which would favour whoever runs second."""
        self.generation += 1
        self.root = self.workdir / f"run{self.generation}"
        self.root.mkdir()

    def cleanup(self) -> None:
        fresh_dir(self.workdir).rmdir()

    def import_layer(self, layer: Path, diff_id: str) -> None:
        raise NotImplementedError

    def import_image(self, image: BenchImage) -> None:
        for layer, diff_id in zip(image.layers, image.diff_ids):
            self.import_layer(layer, diff_id)

    def checkout(self, image: BenchImage, dest: Path) -> None:
        raise Unsupported(f"{self.name} cannot check out images yet")

    def remove(self, image: BenchImage) -> None:
        raise Unsupported(f"{self.name} cannot remove images yet")

    def disk_usage(self) -> int:
        return disk_usage(self.root)


DRIVERS = ["layerstore", "gnutar", "gnutar_sync", "tarfile", "ostree"]


def load(name: str) -> type[Driver]:
    return importlib.import_module(f"drivers.{name}").DRIVER
