"""ostree: each layer committed from its tar (`ostree commit --tree=tar=`) into one repository,
which deduplicates files by content and metadata as layerstore does."""

import os
import shutil

from drivers import Driver
from harness import run


class OSTree(Driver):
    name = "ostree"

    @classmethod
    def missing(cls):
        return None if shutil.which("ostree") else "ostree is not installed (apt-get install ostree)"

    def reset(self):
        super().reset()
        self.repo = self.root / "repo"
        # bare: objects are real files with their owners, which a hardlink checkout shares
        # (bare-user when not root, which keeps owners in xattrs).
        mode = "bare" if os.geteuid() == 0 else "bare-user"
        run(["ostree", "init", f"--repo={self.repo}", f"--mode={mode}"])

    def import_layer(self, layer, diff_id):
        run(["ostree", "commit", f"--repo={self.repo}", f"--branch=layer/{diff_id[7:]}",
             f"--tree=tar={layer}", "--tar-autocreate-parents", "--no-bindings"])


DRIVER = OSTree
