"""GNU tar, the naive baseline: each layer tar kept as it came; every container gets its own
full copy, unpacked layer after layer with the whiteouts applied."""

from __future__ import annotations

import json
import shutil

from ..driver import Driver
from ..system import run
from . import apply_whiteouts, layer_whiteouts


class Tar(Driver):
    name = "tar"

    @classmethod
    def available(cls):
        return cls.need("tar")

    def setup(self):
        (self.root / "layers").mkdir(parents=True)
        (self.root / "containers").mkdir()

    def load(self, image):
        # The docker-archive's layer members, each kept once (by diffID), as a per-layer store does.
        layers = self.root / "layers"
        want = [f"{d[7:]}.tar" for d in image.diff_ids if not (layers / f"{d[7:]}.tar").exists()]
        if want:
            run(["tar", "-x", "-f", str(image.archive), "-C", str(layers), *want])
        (layers / f"{image.id[7:]}.json").write_text(json.dumps(image.diff_ids))

    def start(self, image, name):
        rootfs = self.root / "containers" / name
        rootfs.mkdir()
        for d in json.loads((self.root / "layers" / f"{image.id[7:]}.json").read_text()):
            layer = str(self.root / "layers" / f"{d[7:]}.tar")
            names = run(["tar", "-t", "-f", layer]).splitlines()
            run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-p",
                 "-f", layer, "-C", str(rootfs)])
            apply_whiteouts(rootfs, *layer_whiteouts(names))
        return rootfs

    def stop(self, name):
        shutil.rmtree(self.root / "containers" / name)

    def remove(self, image):
        (self.root / "layers" / f"{image.id[7:]}.json").unlink()

    def gc(self):
        layers = self.root / "layers"
        used = {f"{d[7:]}.tar" for j in layers.glob("*.json") for d in json.loads(j.read_text())}
        for t in layers.glob("*.tar"):
            if t.name not in used:
                t.unlink()
