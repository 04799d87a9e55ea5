"""The store itself: the LMDB index, the import of layers into the C object store, image
trees, checkout, reading without a checkout, rm/gc/du and fsck."""
