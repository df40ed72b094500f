"""Plots of one serving benchmark: throughput vs users, latency percentiles vs users.

Usage: python benchmarks/plot_serving.py OUT/results.json   (serving_report.py calls plot() itself)
Writes throughput_vs_users.png and latency_vs_users.png next to results.json.
"""
import json
import sys
from pathlib import Path


def plot(results, out):
    """-> the paths written. results: the dict serving_report.py writes as results.json."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    levels = results["levels"]
    users = [r["users"] for r in levels]
    title = f"{Path(results['checkpoint']).parent.name or results['checkpoint']}, " \
            f"{results['machine']['nproc']} cores, {results['date']}"
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(users, [r["ok_per_s"] for r in levels], "o-", color="C0", label="TorchServe, successful req/s")
    failed = [(r["users"], r["requests_per_s"]) for r in levels if r["failures"]]
    if failed:
        ax.plot(*zip(*failed), "x", color="C3", label="all answers incl. failures")
    ip = results["inprocess"]
    ax.axhline(ip["batch1"]["examples_per_s"], ls=":", color="gray", label="in-process, batch 1")
    for i, b in enumerate(ip["batched"]):
        ax.axhline(b["examples_per_s"], ls="--", color=f"C{i + 1}", label=f"in-process, batch {b['batch_size']}")
    ax.set(xscale="log", xlabel="concurrent users (closed loop)", ylabel="requests or examples per second",
           title=title, ylim=(0, None))
    ax.set_xticks(users, [str(u) for u in users])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "throughput_vs_users.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        points = [(r["users"], r[key]) for r in levels if r[key] is not None]
        if points:
            ax.plot(*zip(*points), style, label=key.replace("_ms", ""))
    ax.set(xscale="log", yscale="log", xlabel="concurrent users (closed loop)", ylabel="latency, ms (locust)",
           title=title)
    ax.set_xticks(users, [str(u) for u in users])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "latency_vs_users.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: plot_serving.py RESULTS_JSON", file=sys.stderr)
        return 2
    path = Path(argv[0])
    for p in plot(json.loads(path.read_text(encoding="utf-8")), path.parent):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
