"""Image formats: reading archives and their manifests (what an import reads), image
references and platforms, and writing images back out (save, export)."""
