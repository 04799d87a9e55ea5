"""umoci: an OCI layout as the store (blobs once by digest); each container a full
`umoci raw unpack` of the image."""

from __future__ import annotations

import shutil

from ..driver import Driver
from ..system import run


class Umoci(Driver):
    name = "umoci"

    @classmethod
    def available(cls):
        return cls.need("umoci", "skopeo")

    def setup(self):
        self.layout = self.root / "oci"
        run(["umoci", "init", "--layout", str(self.layout)])
        (self.root / "containers").mkdir()

    def load(self, image):
        run(["skopeo", "copy", "-q", f"docker-archive:{image.archive}",
             f"oci:{self.layout}:{image.name}"])

    def start(self, image, name):
        rootfs = self.root / "containers" / name
        run(["umoci", "raw", "unpack", "--image", f"{self.layout}:{image.name}", str(rootfs)])
        return rootfs

    def stop(self, name):
        shutil.rmtree(self.root / "containers" / name)

    def remove(self, image):
        run(["umoci", "rm", "--image", f"{self.layout}:{image.name}"])

    def gc(self):
        run(["umoci", "gc", "--layout", str(self.layout)])
