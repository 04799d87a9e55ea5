"""layerstore bench: the generator, the driver registry, and every driver that can run here
passing the harness's checks on small generated images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layerstore import Store
from layerstore.bench import driver as bench_driver
from layerstore.bench.driver import BUILTIN, all_drivers, load_class, resolve
from layerstore.bench.drivers import layer_whiteouts
from layerstore.bench.drivers.tar import Tar
from layerstore.bench.generator import Spec, generate
from layerstore.bench.harness import Harness, Plan
from layerstore.cli import main

from helpers import need_root

SMALL = Spec(seed=7, base_files=80, app_files=24, hardlink_rate=0.05, xattr_rate=0.1)


def _small_plan(**kw) -> Plan:
    return Plan(images=(1, 2), containers=(1, 2), versions=2, spec=SMALL, fs_gib=2,
                check=True, read_share=1, **kw)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_same_seed_same_bytes(tmp_path):
    _, a = generate(SMALL, tmp_path / "a", 2, chain=2)
    _, b = generate(SMALL, tmp_path / "b", 2, chain=2)
    assert [i.id for i in a] == [i.id for i in b]
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    _, c = generate(Spec(**{**SMALL.__dict__, "seed": 8}), tmp_path / "c", 2, chain=2)
    assert {i.id for i in c}.isdisjoint(i.id for i in a)


def test_generator_images_share_layers_and_files(tmp_path):
    g, images = generate(SMALL, tmp_path, 2, chain=3)
    imgs, chain = images[:2], images[2:]
    assert imgs[0].diff_ids[:-1] == imgs[1].diff_ids[:-1]           # shared base layer
    assert imgs[0].diff_ids[-1] != imgs[1].diff_ids[-1]
    both = g.expected_totals(imgs)
    one = g.expected_totals(imgs[:1])
    # the second image's own layer repeats the shared files: fewer new distinct bytes than
    # new layer bytes
    assert both["object_bytes"] - one["object_bytes"] < both["layer_bytes"] - one["layer_bytes"]
    versions = [g.expected_totals(chain[:k]) for k in (1, 2, 3)]
    assert versions[0]["layers"] < versions[2]["layers"]


def test_generator_expected_totals_match_layerstore_du(tmp_path):
    g, images = generate(SMALL, tmp_path / "gen", 2, chain=2)
    with Store(tmp_path / "store") as store:
        for image in images:
            store.import_archive(image.archive)
        du = store.du()
    exp = g.expected_totals(images)
    assert (du.objects, du.layer_bytes) == (exp["objects"], exp["layer_bytes"])


def test_layer_whiteouts_keep_the_layers_own_entries_under_an_opaque_dir():
    whiteouts, opaque = layer_whiteouts(["./a/", "./a/.wh..wh..opq", "./a/new/x", "b/.wh.c",
                                         "a/kept"])
    assert whiteouts == ["b/c"]
    assert opaque == {"a": {"new", "kept"}}


def test_absent_program_is_reported_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))       # nothing on it
    chosen, skipped = resolve(["tar", "podman-overlay", "containerd-native", "no-such",
                               "podman-layerstore", "containerd-layerstore"])
    reasons = dict(skipped)
    assert chosen == []
    assert reasons["tar"] == "tar is not installed"
    assert reasons["podman-overlay"] == "podman is not installed"
    assert reasons["containerd-native"] == "containerd is not installed"
    assert reasons["podman-layerstore"] == "podman is not installed"
    assert reasons["containerd-layerstore"] in ("containerd is not installed",
                                                "the containerd snapshotter needs grpcio and "
                                                "protobuf: pip install 'layerstore[containerd]'")
    assert reasons["no-such"].startswith("no such driver")


def test_bench_list_names_every_driver_with_its_state(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        assert name in out
    assert "tar" in out and "skipped: tar is not installed" in out


def test_third_party_driver_from_the_entry_point_group(monkeypatch):
    class EP:
        name, value = "mine", "layerstore.bench.drivers.tar:Tar"

    monkeypatch.setattr(bench_driver, "entry_points",
                        lambda group: [EP] if group == bench_driver.ENTRY_POINT_GROUP else [])
    assert all_drivers()["mine"] == EP.value
    assert load_class(all_drivers()["mine"]) is Tar


class _WrongMode(Tar):
    """A broken driver: one file of its containers has another mode than in the image."""
    name = "wrong-mode"

    def start(self, image, name):
        rootfs = super().start(image, name)
        (rootfs / "etc" / "os-release").chmod(0o600)
        return rootfs


class _SharesWrites(Tar):
    """A broken driver claiming isolation: every container is the same directory."""
    name = "shares-writes"

    def start(self, image, name):
        shared = self.root / "containers" / "shared"
        if not shared.exists():
            super().start(image, "shared")
        return shared

    def stop(self, name):
        pass

    def teardown(self):
        import shutil
        shutil.rmtree(self.root / "containers" / "shared", ignore_errors=True)


def _run(cls, tmp_path, workloads=("load", "start", "chain")) -> Harness:
    h = Harness(_small_plan(workloads=workloads), tmp_path / "out", tmp_path / "work",
                log=lambda m: None)
    try:
        h.run_driver(cls)
    finally:
        h.close()
    return h


@need_root("loop filesystems and mounts")
@pytest.mark.parametrize("broken,check", [(_WrongMode, "tree equals umoci unpack"),
                                          (_SharesWrites, "write isolation")])
def test_check_catches_a_broken_driver(tmp_path, broken, check):
    if Tar.available() or not os.access("/usr/bin/umoci", os.X_OK):
        pytest.skip("needs GNU tar and umoci")
    h = _run(broken, tmp_path, workloads=("start",))
    assert not h.errors
    failed = {c["check"] for c in h.checks if c["required"] and not c["ok"]}
    assert check in failed


@need_root("loop filesystems, mounts and dropped caches")
@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_driver_passes_check(tmp_path, name):
    cls = load_class(all_drivers()[name])
    why = cls.available()
    if why:
        pytest.skip(f"{name}: {why}")
    h = _run(cls, tmp_path)
    assert h.errors == {}
    failed = [c for c in h.checks if c["required"] and not c["ok"]]
    assert failed == []
    kinds = {c["check"].split(" (")[0] for c in h.checks}
    assert {"tree equals umoci unpack", "write isolation", "gc to baseline"} <= kinds
    # the raw samples are JSON lines, one per measurement
    samples = [json.loads(l) for l in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert {s["workload"] for s in samples} >= {"load", "start", "chain"}


@need_root("loop filesystems and dropped caches")
def test_cli_check_writes_table_summary_and_exit_status(tmp_path, capsys):
    if Tar.available():
        pytest.skip(Tar.available())
    rc = main(["bench", "--quick", "--drivers", "tar", "--images", "1", "--containers", "1,2",
               "--versions", "1", "--check", "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work")])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("driver")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["drivers"]) == {"tar"}
    assert summary["environment"]["kernel"]
    assert not list((tmp_path / "work").iterdir())          # scratch removed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "charts: none" in out
    else:
        assert (tmp_path / "out" / "bars.png").read_bytes()[:4] == b"\x89PNG"
