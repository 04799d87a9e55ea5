"""`layerstore bench`: the command; cli.py adds it to the layerstore group."""

from __future__ import annotations

import json
import time

import click

from .. import errors


def _ints(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.split(",") if v)
    except ValueError:
        raise click.BadParameter("expected numbers separated by commas, e.g. 1,4,16")
    if not out or min(out) < 1:
        raise click.BadParameter("expected positive numbers, e.g. 1,4,16")
    return out


def _names(ctx, param, value: str | None):
    return [v for v in value.split(",") if v] if value else None


@click.command()
@click.option("--drivers", callback=_names, metavar="NAME,...",
              help="Drivers to run (default: every one available; see --list).")
@click.option("--workloads", callback=_names, metavar="load,start,chain",
              help="Workloads to run (default: all).")
@click.option("--images", "n_images", callback=_ints, metavar="N,...",
              help="Numbers of images loaded at once (default 1,4,16; --quick 1,4).")
@click.option("--containers", callback=_ints, metavar="M,...",
              help="Numbers of containers started (default 1,8,32; --quick 1,4,8).")
@click.option("--versions", type=click.IntRange(1, 100), help="Length of the version chain "
              "(default 10; --quick 5).")
@click.option("--seed", type=int, default=1, show_default=True, help="Generator seed.")
@click.option("--fs", "fs_kind", type=click.Choice(["ext4", "xfs", "btrfs"]), default="ext4",
              show_default=True, help="The fresh filesystem each driver gets (btrfs drivers "
              "always get btrfs).")
@click.option("--quick", is_flag=True, help="Smaller images and fewer containers: minutes.")
@click.option("--check", is_flag=True, help="Exit 1 unless every driver's trees equal umoci's "
              "unpack, isolation holds where the driver claims it, and gc returns to baseline.")
@click.option("--baseline", default="tar", show_default=True, help="Driver the table is relative to.")
@click.option("--out", type=click.Path(file_okay=False), default="layerstore-bench",
              show_default=True, help="Where samples, summary, table and charts go.")
@click.option("--work", type=click.Path(file_okay=False), default="/var/tmp/layerstore-bench-run",
              show_default=True, help="Scratch: generated images and the loop filesystems.")
@click.option("--list", "list_only", is_flag=True, help="List the drivers and why any is skipped.")
def bench(drivers, workloads, n_images, containers, versions, seed, fs_kind, quick, check,
          baseline, out, work, list_only):
    """Compare container storage drivers on the same generated images, each on a fresh
    filesystem of its own: load, start, page cache, disk, isolation, gc.  Needs root."""
    import shutil
    from pathlib import Path

    from .driver import resolve
    from .generator import Spec
    from .harness import WORKLOADS, Harness, Plan

    chosen, skipped = resolve(drivers)
    if list_only:
        for cls in chosen:
            click.echo(f"{cls.name:24} available")
        for name, why in skipped:
            click.echo(f"{name:24} skipped: {why}")
        return
    for name, why in skipped:
        click.echo(f"skipping {name}: {why}", err=True)
    if not chosen:
        raise errors.LayerstoreError("bench: no driver can run here (see the reasons above)")
    bad = set(workloads or ()) - set(WORKLOADS)
    if bad:
        raise click.BadParameter(f"unknown workload {', '.join(sorted(bad))} "
                                 f"(known: {', '.join(WORKLOADS)})", param_hint="--workloads")
    plan = Plan.quick() if quick else Plan()
    plan.fs, plan.check = fs_kind, check
    plan.spec = Spec.quick(seed) if quick else Spec(seed=seed)
    if n_images:
        plan.images = n_images
    if containers:
        plan.containers = containers
    if versions:
        plan.versions = versions
    if workloads:
        plan.workloads = tuple(w for w in WORKLOADS if w in workloads)

    from . import report, system
    out_dir, work_dir = Path(out), Path(work) / str(int(time.time()))
    env = system.environment(fs_kind)
    click.echo(f"# layerstore bench: {env['kernel']}, {env['cpu']}, {env['cores']} cores, "
               f"{fs_kind}; drivers: {', '.join(c.name for c in chosen)}", err=True)
    t0 = time.perf_counter()
    h = Harness(plan, out_dir, work_dir, log=lambda m: click.echo(m, err=True))
    try:
        for cls in chosen:
            click.echo(f"{cls.name} ...", err=True)
            h.run_driver(cls)
    finally:
        h.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    samples = [json.loads(l) for l in h.samples_path.read_text().splitlines()]
    env["plan"] = {"images": plan.images, "containers": plan.containers,
                   "versions": plan.versions, "workloads": plan.workloads,
                   "spec": plan.spec.__dict__, "quick": quick}
    env["run_s"] = round(time.perf_counter() - t0, 1)
    order = [c.name for c in chosen]
    text, pngs = report.write(out_dir, samples, h.checks, h.errors, skipped, env, baseline, order)
    click.echo(text)
    for name, why in h.errors.items():
        click.echo(f"{name}: error: {why}")
    click.echo(f"\nsamples: {h.samples_path}\nsummary: {out_dir / 'summary.json'}")
    if pngs:
        click.echo("charts: " + " ".join(str(p) for p in pngs))
    else:
        click.echo("charts: none (pip install 'layerstore[bench]' for matplotlib)")
    click.echo(f"{env['run_s']} s", err=True)
    if check:
        failed = [c for c in h.checks if c["required"] and not c["ok"]]
        for c in failed:
            click.echo(f"check failed: {c['driver']}: {c['check']}: {c['detail']}", err=True)
        if failed or h.errors:
            raise click.exceptions.Exit(1)
