"""layerstore: every distinct file stored once, by the C core."""

from layerstore import Store, _native

from drivers import Driver


class LayerStore(Driver):
    name = "layerstore"

    def reset(self):
        super().reset()
        self.store_root = self.root / "store"
        self.objects = None     # the bare object store, for single-layer ingest
        self.last = None

    def import_layer(self, layer, diff_id):
        """The C ingest alone (no index): what bench_ingest measures."""
        if self.objects is None:
            self.store_root.mkdir(mode=0o700)
            self.objects = _native.ObjectStore(self.store_root)
        with open(layer, "rb") as f:
            self.last = _native.ingest_stream(f, self.objects)
        if self.last.stats.diff_id != diff_id:
            raise RuntimeError(f"{layer}: diffID {self.last.stats.diff_id}, expected {diff_id}")

    def import_image(self, image):
        """The whole `layerstore import` of the docker-archive: verified, indexed, durable."""
        self.import_archive(image.plain)

    def import_archive(self, path):
        with Store(self.store_root) as store:
            store.import_archive(path)

    def checkout(self, image, dest):
        """Hardlinks, as the other drivers' checkouts share their stored files."""
        with Store(self.store_root) as store:
            store.checkout(image.config_digest, dest, link=True)


DRIVER = LayerStore
