"""PNG plots of a bench result: batch-1 latency distribution and throughput against batch size.

matplotlib is an optional extra (``pip install 'emoedge[plots]'``); without it the plots are skipped
and the caller says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _label(row: dict[str, Any]) -> str:
    return f"{row['model']}{' (peer)' if row.get('peer') else ''} {row['backend']} {row['precision']}"


def write_plots(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write latency.png and throughput.png; returns the paths (empty when no row has timings)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display on a headless Jetson
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    written: list[Path] = []

    timed = [r for r in rows if r.get("latencies_ms")]
    if timed:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(timed) + 2), 4.5))
        ax.boxplot([r["latencies_ms"] for r in timed], whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(timed) + 1), [_label(r).replace(" ", "\n") for r in timed], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("batch-1 latency (ms, log scale)")
        ax.set_title("Latency distribution (whiskers: p1 and p99)")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / "latency.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    swept = [r for r in rows if r.get("throughput")]
    if swept:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in swept:
            points = sorted((int(b), v) for b, v in r["throughput"].items())
            ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=_label(r))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples per second (log scale)")
        ax.set_title("Throughput against batch size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / "throughput.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
