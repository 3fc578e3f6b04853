"""Plots scripts/bench-flink.sh's TSV: records per second per query, Oxflow beside Flink,
and records per CPU second, as a PNG.

    python plot.py TSV OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    queries = [r["query"] for r in rows]
    x = range(len(queries))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (ox, fl, title) in zip(axes, [
        ("oxflow_records_per_sec", "flink_records_per_sec", "records per second (wall)"),
        ("oxflow_per_cpu_s", "flink_per_cpu_s", "records per CPU second"),
    ]):
        ax.bar([i - 0.2 for i in x], [float(r[ox]) / 1e6 for r in rows], 0.4, label="Oxflow")
        ax.bar([i + 0.2 for i in x], [float(r[fl]) / 1e6 for r in rows], 0.4, label="Flink")
        ax.set_xticks(list(x), queries)
        ax.set_ylabel("millions")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Nexmark on the same events, same parallelism (scripts/bench-flink.sh)")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
