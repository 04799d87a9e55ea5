"""ostree: a bare repository keeps every distinct file once (by content and metadata); each
layer is a commit from its tar, and a container is a hardlink union checkout of its layers
with the whiteouts applied.  Hardlinks share the repository's inodes, so a write into a file
writes the repository: not isolated."""

from __future__ import annotations

import json
import shutil

from ..driver import Driver
from ..system import run
from . import apply_whiteouts, layer_whiteouts


class OSTree(Driver):
    name = "ostree"
    isolated = False

    @classmethod
    def available(cls):
        return cls.need("ostree", "tar")

    def setup(self):
        self.repo = self.root / "repo"
        self.meta = self.root / "meta"
        self.tmp = self.root / "tmp"
        for d in (self.meta, self.tmp, self.root / "containers"):
            d.mkdir(parents=True)
        run(["ostree", "init", f"--repo={self.repo}", "--mode=bare"])

    def load(self, image):
        for d in image.diff_ids:
            if (self.meta / f"{d[7:]}.json").exists():
                continue
            run(["tar", "-x", "-f", str(image.archive), "-C", str(self.tmp), f"{d[7:]}.tar"])
            layer = str(self.tmp / f"{d[7:]}.tar")
            run(["ostree", "commit", f"--repo={self.repo}", f"--branch=layer/{d[7:]}",
                 f"--tree=tar={layer}", "--tar-autocreate-parents", "--no-bindings"])
            names = run(["tar", "-t", "-f", layer]).splitlines()
            (self.meta / f"{d[7:]}.json").write_text(json.dumps(layer_whiteouts(names), default=list))
            (self.tmp / f"{d[7:]}.tar").unlink()
        (self.meta / f"{image.id[7:]}.image").write_text(json.dumps(image.diff_ids))

    def start(self, image, name):
        rootfs = self.root / "containers" / name
        for d in json.loads((self.meta / f"{image.id[7:]}.image").read_text()):
            run(["ostree", "checkout", f"--repo={self.repo}", "-H", "--union",
                 f"layer/{d[7:]}", str(rootfs)])
            whiteouts, opaque = json.loads((self.meta / f"{d[7:]}.json").read_text())
            apply_whiteouts(rootfs, whiteouts, {k: set(v) for k, v in opaque.items()})
        return rootfs

    def stop(self, name):
        shutil.rmtree(self.root / "containers" / name)

    def remove(self, image):
        (self.meta / f"{image.id[7:]}.image").unlink()
        used = {d for j in self.meta.glob("*.image") for d in json.loads(j.read_text())}
        for d in image.diff_ids:
            if d not in used and (self.meta / f"{d[7:]}.json").exists():
                run(["ostree", "refs", f"--repo={self.repo}", "--delete", f"layer/{d[7:]}"])
                (self.meta / f"{d[7:]}.json").unlink()

    def gc(self):
        run(["ostree", "prune", f"--repo={self.repo}", "--refs-only"])
