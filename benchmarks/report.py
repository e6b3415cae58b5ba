"""Turns ``benchmarks/out/results.json`` into a Markdown table, PNG plots and ``RESULTS.md``.

    .venv/bin/python benchmarks/report.py [results.json] [--results-md benchmarks/RESULTS.md]

Writes ``table.md``, ``step_vs_leaves.png`` and ``compile_vs_leaves.png`` next to the JSON, and
``RESULTS.md`` (the committed record of the latest figures) where ``--results-md`` says.
"""

import argparse
import json
import os


def fmt_ms(seconds):
    return f"{seconds * 1e3:.3g}"


def step_table(rows):
    """One line per (regime, recipe): median ms, ratio to optax and bandwidth fraction per library."""
    libs = []
    for row in rows:
        libs += [k for k in row["timings"] if k not in libs]
    head = ("| regime | recipe | params | leaves | triad GB/s | bound ms | "
            + " | ".join(f"{lib} ms (×optax, bw)" for lib in libs) + " |")
    lines = [head, "|" + "---|" * (6 + len(libs))]
    for row in rows:
        cells = []
        for lib in libs:
            t = row["timings"].get(lib)
            cells.append("—" if t is None else
                         f"{fmt_ms(t['median_s'])} ({t['ratio_to_optax']:.2f}×, {t['bandwidth_fraction']:.2f})")
        bound = fmt_ms(row["bound_s"]) if "bound_s" in row else "—"
        triad = f"{row['triad_GBps']:.1f}" if "triad_GBps" in row else "—"
        lines.append(f"| {row['regime']} | {row['recipe']} | {row['n_params']:,} | {row['n_leaves']} | "
                     f"{triad} | {bound} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(rows):
    lines = ["| regime | recipe | library | arguments MiB | outputs MiB | aliased MiB | temporaries MiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for lib, m in (row.get("memory") or {}).items():
            if not m:
                continue
            mib = lambda k: f"{m.get(k, 0) / 2**20:.1f}"  # noqa: E731
            lines.append(f"| {row['regime']} | {row['recipe']} | {lib} | {mib('argument_size_in_bytes')} | "
                         f"{mib('output_size_in_bytes')} | {mib('alias_size_in_bytes')} | "
                         f"{mib('temp_size_in_bytes')} |")
    return "\n".join(lines)


def compile_table(rows):
    if not rows:
        return ""
    libs = list(rows[0]["compile_s"])
    lines = ["| recipe | leaves | params | " + " | ".join(f"{lib} s" for lib in libs)
             + (" | gradx-fused / optax" if "gradx-fused" in libs else "") + " |",
             "|" + "---|" * (3 + len(libs) + ("gradx-fused" in libs))]
    for row in rows:
        c = row["compile_s"]
        ratio = f" | {c['gradx-fused'] / c['optax']:.3f}" if "gradx-fused" in c else ""
        lines.append(f"| {row['recipe']} | {row['n_leaves']} | {row['n_params']:,} | "
                     + " | ".join(f"{c[lib]:.2f}" for lib in libs) + ratio + " |")
    return "\n".join(lines)


def plots(result, out_dir):
    """Step time (many-leaves regimes, per recipe) and compile time against the leaf count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    many = [r for r in result.get("steps", []) if r["regime"].startswith("many")]
    if many:
        recipes = sorted({r["recipe"] for r in many}, key=[r["recipe"] for r in many].index)
        fig, axes = plt.subplots(1, len(recipes), figsize=(4 * len(recipes), 3.5), squeeze=False)
        for ax, recipe in zip(axes[0], recipes):
            rows = sorted((r for r in many if r["recipe"] == recipe), key=lambda r: r["n_leaves"])
            libs = []
            for r in rows:
                libs += [k for k in r["timings"] if k not in libs]
            for lib in libs:
                pts = [(r["n_leaves"], r["timings"][lib]["median_s"] * 1e3) for r in rows if lib in r["timings"]]
                ax.plot(*zip(*pts), marker="o", label=lib)
            ax.set(title=recipe, xlabel="leaves", ylabel="step ms (median)", yscale="log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "step_vs_leaves.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    comp = result.get("compile", [])
    if comp:
        recipes = sorted({r["recipe"] for r in comp}, key=[r["recipe"] for r in comp].index)
        fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 3.5), squeeze=False)
        for ax, recipe in zip(axes[0], recipes):
            rows = [r for r in comp if r["recipe"] == recipe]
            for lib in rows[0]["compile_s"]:
                ax.plot([r["n_leaves"] for r in rows], [r["compile_s"][lib] for r in rows],
                        marker="o", label=lib)
            ax.set(title=f"compile: {recipe}", xlabel="leaves", ylabel="trace+lower+compile s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "compile_vs_leaves.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def markdown(result):
    m = result["machine"]
    bw = result["bandwidth"]
    parts = [
        f"Command: `{result['command']}` (started {result['started']}).",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores, "
        f"{m.get('mem_total_kB', 0) / 2**20:.0f} GiB, {', '.join(m['devices'])}; jax {m['jax']}, "
        f"optax {m['optax']}, torch {m['torch']} ({m['torch_threads']} threads). Load average at start "
        f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_at_start', []))}, at end "
        f"{', '.join(f'{x:.1f}' for x in result.get('loadavg_at_end', []))}.",
        f"Measured bandwidth: triad {bw['triad_GBps']:.1f} GB/s (best {bw['triad_best_GBps']:.1f}) "
        "at the start (output donated, so no page faults); each step row also times a "
        "triad in turn with its steps (column `triad GB/s`). `bw` = bound time / step time, the bound "
        "being the recipe's bytes per float32 parameter (AdamW 28, clip+AdamW 32, SGD-Nesterov 20, "
        "Lion 20, Adafactor 12) over the row's triad bandwidth; 1.0 is the memory-bandwidth limit "
        "(values above 1 mean the buffers fit in cache). `model` rows use the start bandwidth.",
    ]
    if result.get("notes"):
        parts.append("Notes: " + "; ".join(result["notes"]) + ".")
    parts += ["", "## Step time (median ms, ratio to optax, fraction of the bandwidth bound)", "",
              step_table(result.get("steps", []) + result.get("model", []))]
    if result.get("model"):
        parts += ["", f"`model` rows: {result['model'][0]['model']}, forward + backward + optimizer + "
                      "apply in one jit (torch: forward, backward, `optimizer.step`)."]
    mem = memory_table(result.get("steps", []))
    if mem.count("\n") > 1:
        parts += ["", "## `compiled.memory_analysis()` of one donated step", "", mem]
    if result.get("compile"):
        parts += ["", "## Compile time (trace + lower + compile of one step) against leaf count", "",
                  compile_table(result["compile"])]
    return "\n".join(parts) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="?", default=os.path.join(os.path.dirname(__file__), "out", "results.json"))
    p.add_argument("--results-md", help="also write this RESULTS.md (title, table, plots' description)")
    p.add_argument("--note", default="", help="a paragraph to put in RESULTS.md (conditions of the run)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        result = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(args.results))
    body = markdown(result)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(body)
    written = plots(result, out_dir)
    print("wrote", os.path.join(out_dir, "table.md"), *written)
    if args.results_md:
        with open(args.results_md, "w") as f:
            f.write("# Benchmark results\n\nGenerated by `benchmarks/report.py` from `make bench` "
                    "(plots: `benchmarks/out/step_vs_leaves.png`, `compile_vs_leaves.png`).\n\n"
                    + (args.note + "\n\n" if args.note else "") + body)
        print("wrote", args.results_md)


if __name__ == "__main__":
    main()
