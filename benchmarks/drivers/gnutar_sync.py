"""GNU tar as gnutar does it, then `sync -f` on its storage: the durable peer.  layerstore
makes its objects durable (syncfs) before it commits an import; plain tar leaves its files in
the page cache, so only this contestant pays the same writeback."""

from drivers.gnutar import GnuTar
from harness import run


class GnuTarSync(GnuTar):
    name = "gnutar_sync"

    def import_image(self, image):
        super().import_image(image)
        run(["sync", "-f", str(self.root)])


DRIVER = GnuTarSync
