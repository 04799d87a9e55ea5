"""GNU tar extracting each layer into a directory of its own: the overlay2-style baseline."""

import shutil
from pathlib import Path

from drivers import Driver
from harness import run


class GnuTar(Driver):
    name = "gnutar"

    @classmethod
    def missing(cls):
        return None if shutil.which("tar") else "GNU tar is not installed"

    def layer_dir(self, diff_id: str) -> Path:
        return self.root / "layers" / diff_id.split(":")[-1]

    def import_layer(self, layer, diff_id):
        dest = self.layer_dir(diff_id)
        if dest.exists():       # like overlay2, a layer already present is not extracted again
            return
        dest.mkdir(parents=True)
        run(["tar", "-x", "-f", str(layer), "-C", str(dest)])


DRIVER = GnuTar
