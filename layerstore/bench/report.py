"""From raw samples to what a reader chooses by: summary.json, a table relative to a baseline
driver, PNG charts (matplotlib, the optional `layerstore[bench]` extra)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

MB = 1e6


def summarize(samples: list[dict]) -> dict[str, dict]:
    by = defaultdict(list)
    for s in samples:
        by[s["driver"]].append(s)
    out = {}
    for driver, ss in by.items():
        d: dict = defaultdict(dict)

        def pick(workload, op, **kw):
            return [s for s in ss if s["workload"] == workload and s["op"] == op
                    and all(s.get(k) == v for k, v in kw.items())]

        for s in pick("load", "disk"):
            n = s["n"]
            loads = pick("load", "load", n=n)
            d["load_s"][n] = sum(x["wall_s"] for x in loads)
            d["load_cpu_s"][n] = sum(x["cpu_s"] for x in loads)
            d["load_written_bytes"][n] = sum(x["written_bytes"] for x in loads)
            d["load_peak_rss_kib"][n] = max(x["peak_rss_kib"] for x in loads)
            d["load_disk_bytes"][n] = s["disk_bytes"]
            d["load_inodes"][n] = s["inodes"]
            d["expected_object_bytes"][n] = s["expected_object_bytes"]
            d["expected_layer_bytes"][n] = s["expected_layer_bytes"]
            gc = pick("load", "remove+gc", n=n)
            if gc:
                d["gc_s"][n] = gc[0]["wall_s"]
        for s in pick("start", "containers-disk"):
            m = s["m"]
            starts = pick("start", "start", m=m)
            warm = [x["wall_s"] for x in starts if not x.get("cold")] or [x["wall_s"] for x in starts]
            d["start_cold_s"][m] = next(x["wall_s"] for x in starts if x.get("cold"))
            d["start_warm_s"][m] = statistics.median(warm)
            d["start_cpu_s"][m] = statistics.median(x["cpu_s"] for x in starts)
            d["containers_disk_bytes"][m] = s["disk_bytes"]
            d["containers_inodes"][m] = s["inodes"]
            reads = pick("start", "read", m=m)
            d["read_cold_s"][m] = next(x["wall_s"] for x in reads if x.get("cold"))
            others = [x["wall_s"] for x in reads if not x.get("cold")]
            if others:
                d["read_others_s"][m] = statistics.median(others)
            pc = pick("start", "page-cache", m=m)
            d["page_cache_bytes"][m] = pc[0]["page_cache_bytes"] if pc else None
        for s in pick("chain", "disk"):
            v = s["version"]
            d["chain_disk_bytes"][v] = s["disk_bytes"]
            d["chain_expected_object_bytes"][v] = s["expected_object_bytes"]
            d["chain_expected_layer_bytes"][v] = s["expected_layer_bytes"]
            d["chain_load_s"][v] = pick("chain", "load", version=v)[0]["wall_s"]
        out[driver] = {k: dict(v) for k, v in d.items()}
    return out


def _last(d: dict | None):
    if not d:
        return None
    return d[max(d)]


def _fmt(v, scale=1.0, digits=2) -> str:
    if v is None:
        return "-"
    v = v / scale
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"


def _ratio(v, b) -> str:
    if v is None or not b:
        return ""
    return f" ({v / b:.2f}x)"


def checks_by_driver(checks: list[dict]) -> dict[str, dict[str, str]]:
    """driver -> {tree, isolation, gc}: "ok", "FAIL", "no" (not claimed) or "-"."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for c in checks:
        key = ("tree" if c["check"].startswith("tree") else
               "isolation" if c["check"].startswith("write") else "gc")
        mark = "ok" if c["ok"] else "FAIL" if c["required"] else "no"
        prev = out[c["driver"]].get(key)
        if prev not in ("FAIL", "no"):
            out[c["driver"]][key] = mark
    return out


def table(summary: dict, checks: list[dict], baseline: str, order: list[str]) -> str:
    """One row per driver: the figures a user chooses by, each with its ratio to baseline."""
    ck = checks_by_driver(checks)
    b = summary.get(baseline, {})
    n_max = max((n for s in summary.values() for n in s.get("load_s", {})), default=None)
    m_max = max((m for s in summary.values() for m in s.get("start_warm_s", {})), default=None)
    cols = ["driver", f"load {n_max} img s", f"disk {n_max} img MB", "written MB",
            f"start ms (M={m_max})", "cold read s", f"page cache M={m_max} MB",
            f"disk M={m_max} MB", "chain disk MB", "tree", "isolated", "gc"]
    rows = [cols]
    for name in order:
        s = summary.get(name)
        if s is None:
            continue
        g = lambda key, at: (s.get(key) or {}).get(at)           # noqa: E731
        gb = lambda key, at: (b.get(key) or {}).get(at)          # noqa: E731
        rows.append([
            name,
            _fmt(g("load_s", n_max)) + _ratio(g("load_s", n_max), gb("load_s", n_max)),
            _fmt(g("load_disk_bytes", n_max), MB, 1)
            + _ratio(g("load_disk_bytes", n_max), gb("load_disk_bytes", n_max)),
            _fmt(g("load_written_bytes", n_max), MB, 1),
            _fmt(g("start_warm_s", m_max), 1e-3, 0)
            + _ratio(g("start_warm_s", m_max), gb("start_warm_s", m_max)),
            _fmt(g("read_cold_s", m_max), 1, 3),
            _fmt(g("page_cache_bytes", m_max), MB, 1)
            + _ratio(g("page_cache_bytes", m_max), gb("page_cache_bytes", m_max)),
            _fmt(g("containers_disk_bytes", m_max), MB, 1)
            + _ratio(g("containers_disk_bytes", m_max), gb("containers_disk_bytes", m_max)),
            _fmt(_last(s.get("chain_disk_bytes")), MB, 1),
            ck[name].get("tree", "-"), ck[name].get("isolation", "-"), ck[name].get("gc", "-"),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(text: str) -> str:
    rows = [r for r in text.splitlines() if not set(r) <= {"-", " "}]
    cells = [[c for c in _split(r)] for r in rows]
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    out += ["| " + " | ".join(c) + " |" for c in cells[1:]]
    return "\n".join(out)


def _split(row: str) -> list[str]:
    import re
    return [c for c in re.split(r"\s{2,}", row.strip())]


def charts(summary: dict, out: Path, order: list[str]) -> list[Path]:
    """PNG charts; [] when matplotlib is absent (pip install 'layerstore[bench]')."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return []
    names = [n for n in order if n in summary]
    made = []
    n_max = max((n for s in summary.values() for n in s.get("load_s", {})), default=None)
    m_max = max((m for s in summary.values() for m in s.get("start_warm_s", {})), default=None)
    metrics = [
        ("load_s", n_max, 1, f"load {n_max} images (s)"),
        ("load_disk_bytes", n_max, MB, f"disk after loading {n_max} images (MB)"),
        ("load_written_bytes", n_max, MB, f"written to the device loading {n_max} images (MB)"),
        ("start_warm_s", m_max, 1e-3, f"container start, median of {m_max} (ms)"),
        ("read_cold_s", m_max, 1, "cold first read of the file list (s)"),
        ("containers_disk_bytes", m_max, MB, f"disk for {m_max} containers (MB)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(16, 0.45 * len(names) * 2 + 3))
    for ax, (key, at, scale, title) in zip(axes.flat, metrics):
        vals = [(summary[n].get(key) or {}).get(at) for n in names]
        ys = range(len(names))
        ax.barh(ys, [(v or 0) / scale for v in vals],
                color=["tab:orange" if n.startswith("layerstore") else "tab:blue" for n in names])
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(title.rsplit("(", 1)[-1].rstrip(")"))
        if key == "load_disk_bytes":
            exp = next((s["expected_object_bytes"].get(at) for s in summary.values()
                        if s.get("expected_object_bytes")), None)
            lay = next((s["expected_layer_bytes"].get(at) for s in summary.values()
                        if s.get("expected_layer_bytes")), None)
            if exp:
                ax.axvline(exp / scale, color="tab:green", ls="--", label="distinct files")
            if lay:
                ax.axvline(lay / scale, color="tab:red", ls=":", label="distinct layers")
            ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("layerstore bench: each driver on its own fresh filesystem, same images")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    made.append(out / "bars.png")
    fig.savefig(made[-1], dpi=90)
    plt.close(fig)

    for key, xkey, xlabel, ylabel, fname, title in [
        ("page_cache_bytes", None, "containers of one image (M)", "page cache added (MB)",
         "page_cache.png", "Page cache after reading the same files in M containers"),
        ("containers_disk_bytes", None, "containers of one image (M)", "disk (MB)",
         "containers_disk.png", "Disk used by M containers of one image"),
        ("chain_disk_bytes", "chain_expected", "image versions loaded", "disk (MB)",
         "chain.png", "Disk after loading each version of an image (a share of files edited)"),
        ("load_s", None, "images loaded (N)", "time (s)", "load.png",
         "Time to load N images sharing layers and files (cold)"),
    ]:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        any_line = False
        for k, n in enumerate(names):
            series = summary[n].get(key)
            if not series:
                continue
            xs = sorted(series)
            # 12+ drivers: tab20's colours and a marker each, so no two lines look alike
            ax.plot([x + (1 if key == "chain_disk_bytes" else 0) for x in xs],
                    [(series[x] or 0) / (MB if "bytes" in key else 1) for x in xs],
                    marker="os^Dv<>PXph*"[k % 12], color=plt.get_cmap("tab20")(k % 20),
                    label=n)
            any_line = True
        if not any_line:
            plt.close(fig)
            continue
        if key in ("page_cache_bytes", "containers_disk_bytes"):
            # Drivers land on the same few values (one copy, or one per container): name
            # them at the last point, where their lines would hide each other.
            ends = sorted(((summary[n][key][max(summary[n][key])] or 0) / MB, n)
                          for n in names if summary[n].get(key))
            span = max((v for v, _ in ends), default=0) or 1
            groups: dict[float, list[str]] = {}
            cluster: list[tuple[float, str]] = []
            for v, n in ends + [(float("inf"), "")]:
                # values closer than 4% of the axis share one label
                if cluster and v - cluster[0][0] > 0.04 * span:
                    groups[sum(c[0] for c in cluster) / len(cluster)] = [c[1] for c in cluster]
                    cluster = []
                cluster.append((v, n))
            x_end = max(max(summary[n].get(key) or {0: 0}) for n in names)
            top = max(groups, default=0)
            for y, members in groups.items():
                # the highest group's names hang below its point, the others' stand above
                ax.annotate("\n".join(members), (x_end, y), xytext=(6, 0),
                            textcoords="offset points", fontsize=7,
                            va="top" if y == top and len(groups) > 1 else "bottom")
            ax.set_xlim(right=x_end * 1.35)
        if xkey == "chain_expected":
            ref = next((s for s in summary.values() if s.get("chain_expected_object_bytes")), None)
            if ref:
                for k, style, label in (("chain_expected_object_bytes", "--", "distinct files"),
                                        ("chain_expected_layer_bytes", ":", "distinct layers")):
                    xs = sorted(ref[k])
                    ax.plot([x + 1 for x in xs], [ref[k][x] / MB for x in xs], ls=style,
                            color="black", label=f"expected: {label}")
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        made.append(out / fname)
        fig.savefig(made[-1], dpi=90)
        plt.close(fig)
    return made


def write(out: Path, samples: list[dict], checks: list[dict], errors: dict, skipped: list,
          env: dict, baseline: str, order: list[str]) -> tuple[str, list[Path]]:
    summary = summarize(samples)
    text = table(summary, checks, baseline, order)
    (out / "summary.json").write_text(json.dumps({
        "environment": env, "baseline": baseline, "drivers": summary, "checks": checks,
        "errors": errors, "skipped": [{"driver": n, "reason": r} for n, r in skipped],
    }, indent=1, default=str))
    (out / "table.txt").write_text(text + "\n")
    (out / "table.md").write_text(markdown_table(text) + "\n")
    return text, charts(summary, out, order)
