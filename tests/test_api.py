"""The public API as an embedding tool sees it: everything it gets back from a Store is a type
`layerstore` exports, frozen, and each method name means one thing."""

import dataclasses
import inspect
import typing

import pytest

import archives as A
import layerstore
from layerstore import DiffResult, Image, InspectResult, Layer, Store


def _classes(hint) -> set[type]:
    """The classes a type hint names, through generics and unions (Callable[[P], None] too)."""
    if isinstance(hint, (list, tuple)):
        return set().union(*(_classes(h) for h in hint))
    args = typing.get_args(hint)
    if args:
        return _classes(typing.get_origin(hint)) | _classes(args)
    return {hint} if isinstance(hint, type) else set()


def test_every_type_a_store_hands_out_is_exported_and_frozen():
    todo: list[type] = []
    for name, fn in inspect.getmembers(Store, inspect.isfunction):
        if not name.startswith("_"):
            todo += _classes(list(typing.get_type_hints(fn).values()))   # returns, callbacks
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen or not dataclasses.is_dataclass(cls):
            continue
        seen.add(cls)
        todo += _classes(list(typing.get_type_hints(cls).values()))     # their fields
    ours = {cls for cls in seen if cls.__module__.startswith("layerstore")}
    names = {cls.__name__ for cls in ours}
    assert {"Image", "Layer", "Problem", "GcResult", "DuResult", "ImageUsage", "Mount",
            "HistoryEntry", "InspectResult", "DiffResult", "Progress"} <= names
    assert sorted(names - set(layerstore.__all__)) == []
    assert all(getattr(layerstore, cls.__name__) is cls for cls in ours)
    assert sorted(cls.__name__ for cls in ours if not cls.__dataclass_params__.frozen) == []


def test_store_open_reads_a_file_and_nothing_else():
    assert list(inspect.signature(Store.open).parameters) == ["self", "ref", "path"]


@pytest.fixture
def store(tmp_path):
    layers = [A.layer(("f", "etc/os-release", b"NAME=test\n")),
              A.layer(("f", "app/main.py", b"print('hi')\n"), ("wh", "etc/os-release"))]
    (tmp_path / "a.tar").write_bytes(A.tar_of(A.oci_layout(layers, ["app:1"])))
    with Store(tmp_path / "store") as s:
        s.import_archive(tmp_path / "a.tar")
        yield s


def test_inspect_is_the_image_its_config_manifest_and_layers(store):
    got = store.inspect("app:1")
    assert isinstance(got, InspectResult)
    assert got.image == store.image("app:1") and isinstance(got.image, Image)
    assert got.config == store.config("app:1") and got.manifest == store.manifest("app:1")
    assert got.manifest is not None and got.manifest["config"]["digest"] == got.image.id
    assert got.layers == tuple(store.layer(d) for d in got.image.diff_ids)
    assert all(isinstance(layer, Layer) for layer in got.layers)


def test_diff_is_typed(store):
    assert store.diff("app:1", "app:1") == DiffResult((), (), ())
