"""`layerstore bench`: real container storage drivers compared on the same generated images,
each on a fresh filesystem of its own (see harness.py for the workloads, driver.py for the
interface a driver implements)."""
