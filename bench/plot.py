#!/usr/bin/env python3
"""bench/plot.py RESULTS.jsonl [OUT.png]: a chart of bench/run's comparisons.

One bar per JSON line: how far ahead of its peer we are (the line's "ratio", above 1 means
ahead, on a log scale), labelled with both measurements. Needs matplotlib (in .venv).
    bench/run | tee bench/results.jsonl && .venv/bin/python bench/plot.py bench/results.jsonl docs/bench.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# The target set for each comparison when its benchmark was written, as a ratio against the same
# peer (None: no target).
TARGETS = {
    ("task_overhead", "tasks_per_s"): 5, ("task_overhead", "roundtrip_us"): 10,
    ("host_stack", "memcpy 1 thread"): 0.8, ("opencl_stack", "clEnqueueWriteBuffer contiguous"): 0.8,
    ("opencl_stack", "clEnqueueWriteBuffer per slice"): 1, ("py_executor", "roundtrip_us"): 5,
    ("py_executor", "tasks_per_s"): 5, ("py_convert", "roundtrip_us"): 3, ("py_stack", "stack_ms"): 2,
    ("py_screen", "images_per_s"): 1, ("screen", "images_per_s"): 1, ("screen_cellprofiler", "images_per_s"): 5,
    ("screen_roofline", "chain_ms"): 0.5, ("trace_overhead", "tasks_per_s"): 0.95,
    ("cuda_h2d", "pinned"): 0.85, ("cuda_d2h", "pinned"): 0.85, ("cuda_stack", "pinned"): 0.8,
}


def target(r):
    for (bench, key), t in TARGETS.items():
        if r["bench"] == bench and (key == r["metric"] or key in r["peer"]):
            return t
    return None


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def main(src, out="docs/bench.png"):
    rows = [json.loads(line) for line in open(src) if line.startswith("{")]
    if not rows:
        sys.exit(f"{src}: no JSON lines")
    labels = [f"{r['bench']} · {r['metric']}\nvs {r['peer']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(13, 0.55 * len(rows) + 1.4))
    targets = [target(r) for r in rows]
    colors = ["#2a9d8f" if (t is None and x >= 1) or (t is not None and x >= t) else "#e76f51"
              for x, t in zip(ratios, targets)]
    y = range(len(rows))
    ax.barh(y, ratios, color=colors)
    for i, t in enumerate(targets):
        if t is not None:
            ax.plot([t, t], [i - 0.42, i + 0.42], color="black", linewidth=2.5)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        tgt = f", target {targets[i]:g}x" if targets[i] is not None else ""
        ax.text(max(ratios[i], targets[i] or 0) * 1.08, i, f"{r['ratio']:.2f}x  ({fmt(r['ours'])} vs "
                f"{fmt(r['peer_value'])}, {r['better']} is better{tgt})", va="center", fontsize=7)
    ax.set_xlabel("ours relative to the peer (> 1: ahead), log scale; black tick: its target; "
                  "red: target missed")
    ax.set_title("arraybridge benchmarks, each against its peer in the same run")
    ax.set_xlim(min(min(ratios) * 0.5, 0.5), max(ratios) * 30)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out} ({len(rows)} comparisons)")


if __name__ == "__main__":
    main(*sys.argv[1:])
