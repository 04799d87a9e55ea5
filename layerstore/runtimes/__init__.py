"""Container runtimes served from the store's layers: overlayfs mounts and commit today."""
