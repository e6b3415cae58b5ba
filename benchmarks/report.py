"""Turns ``benchmarks/out/results.json`` into a Markdown table, PNG plots and ``RESULTS.md``.

    .venv/bin/python benchmarks/report.py [results.json] [--results-md benchmarks/RESULTS.md]
    .venv/bin/python benchmarks/report.py benchmarks/out/matrix/results.json \
        --matrix-md benchmarks/RESULTS.md --note "..."   # only the matrix section, in place

Writes ``table.md``, ``step_vs_leaves.png``, ``compile_vs_leaves.png`` and ``targets.png`` next to
the JSON, and ``RESULTS.md`` (the committed record of the latest figures) where ``--results-md``
says. The targets of the fast-path issue are marked met or not (``targets``), in the table and in
the bars of ``targets.png``, from the same figures. Shampoo, SOAP and Muon are set against AdamW
on the same tree (``matrix_section``); ``--matrix-md`` writes that section alone into an existing
record, replacing the one there, and leaves the rest of the file as it is.
"""

import argparse
import json
import os


FLAT = "gradx-fused-flat"
FLAT_RECIPES = ("adamw", "clip_adamw_cosine", "sgd_nesterov", "lion")
MATRIX_RECIPES = ("shampoo", "soap", "muon")
MATRIX_AIM = 1.3  # a matrix optimizer's step, refresh amortised, over AdamW's (gradx's)
MATRIX_HEADING = ("## Matrix optimizers against AdamW (large regime, refresh every 10 steps "
                  "amortised)")


def _nearest(rows, n_leaves):
    """The rows whose leaf count is nearest ``n_leaves``."""
    if not rows:
        return []
    best = min(abs(r["n_leaves"] - n_leaves) for r in rows)
    return [r for r in rows if abs(r["n_leaves"] - n_leaves) == best]


def targets(result):
    """Every target, as ``{"target", "measured", "limit", "met"}`` (met: measured <= limit):

    - the default path (``gradx``) never slower than Optax: every recipe and regime <= 1.05x;
    - large ``clip_adamw_cosine`` and ``lion`` <= 0.75x Optax's step;
    - the flat path (``gradx-fused-flat``) at ~1000 small leaves: step <= 0.25x and compile
      <= 0.2x Optax's, for AdamW, clip + AdamW + cosine, SGD-Nesterov and Lion;
    - the model step with the flat path: the optimizer under 10% of the step (the step minus
      the same step without the optimizer, over the step);
    - Shampoo, SOAP and Muon (large regime, refresh amortised): gradx's step <= 1.3x gradx's
      AdamW step on the same tree.
    """
    out = []

    def add(target, measured, limit):
        out.append({"target": target, "measured": measured, "limit": limit,
                    "met": measured <= limit})

    steps, model = result.get("steps", []), result.get("model", [])
    for row in steps + model:
        if "gradx" in row["timings"] and "optax" in row["timings"]:  # optax lacks Shampoo, SOAP
            add(f"default path, {row['regime']} {row['recipe']}: x optax",
                row["timings"]["gradx"]["ratio_to_optax"], 1.05)
    for row in steps:
        if row["regime"] == "large" and row["recipe"] in ("clip_adamw_cosine", "lion"):
            add(f"default path, large {row['recipe']}: x optax",
                row["timings"]["gradx"]["ratio_to_optax"], 0.75)
    many = _nearest([r for r in steps if r["regime"].startswith("many")], 1000)
    for row in many:
        if row["recipe"] in FLAT_RECIPES and FLAT in row["timings"]:
            add(f"flat path, {row['regime']} {row['recipe']}: step x optax",
                row["timings"][FLAT]["ratio_to_optax"], 0.25)
    for row in _nearest(result.get("compile", []), 1000):
        if row["recipe"] in FLAT_RECIPES and FLAT in row["compile_s"]:
            add(f"flat path, {row['n_leaves']} leaves {row['recipe']}: compile x optax",
                row["compile_s"][FLAT] / row["compile_s"]["optax"], 0.2)
    for row in model:
        if "optimizer_fraction" in row["timings"].get(FLAT, {}):
            add(f"flat path, model {row['recipe']}: optimizer share of the step",
                row["timings"][FLAT]["optimizer_fraction"], 0.10)
    for m in matrix_rows(result):
        if m["library"] == "gradx" and m["x_gradx_adamw"] is not None:
            add(f"matrix, large {m['recipe']}: x gradx adamw (refresh amortised)",
                m["x_gradx_adamw"], MATRIX_AIM)
    return out


def _adamw_row(result):
    return next((r for r in result.get("steps", [])
                 if r["regime"] == "large" and r["recipe"] == "adamw"), None)


def matrix_rows(result):
    """One dict per (matrix recipe, library) of the large regime: the median step (amortised:
    each timed batch is ``refresh_every`` steps, one refresh among them), its ratios to AdamW's
    step on the same tree (gradx's, optax's, torch's fused), memory and the refresh split."""
    adamw = _adamw_row(result)
    base = (adamw or {}).get("timings", {})
    out = []
    for row in result.get("steps", []):
        if row["regime"] != "large" or row["recipe"] not in MATRIX_RECIPES:
            continue
        for lib, t in row["timings"].items():
            ratio = lambda ref: (t["median_s"] / base[ref]["median_s"]  # noqa: E731
                                 if ref in base else None)
            out.append({"recipe": row["recipe"], "library": lib, "median_s": t["median_s"],
                        "min_s": t.get("min_s", t["median_s"]),
                        "x_gradx_adamw": ratio("gradx"), "x_optax_adamw": ratio("optax"),
                        "x_torch_adamw": ratio("torch-fused"),
                        "memory": (row.get("memory") or {}).get(lib),
                        "refresh": (row.get("refresh") or {}).get(lib),
                        "reference": (row.get("references") or {}).get(lib),
                        "lapack_calls": (row.get("lapack_calls") or {}).get(lib),
                        "refresh_every": row.get("refresh_every", 10),
                        "n_params": row["n_params"], "n_leaves": row["n_leaves"]})
    return out


def _ms(seconds):
    """Milliseconds, 3 significant digits, without an exponent."""
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _x(ratio):
    return "—" if ratio is None else f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def _mib(memory, key):
    return "—" if not memory else f"{memory.get(key, 0) / 2**20:.1f}"


def matrix_table(result):
    """AdamW's rows (the baseline), then each matrix recipe per library: ms per step amortised
    over the 10-step batch, the ratios to AdamW, memory, and the aim (gradx rows)."""
    rows = matrix_rows(result)
    if not rows:
        return ""
    lines = ["| recipe | library | ms / step (median, amortised) | min | × gradx AdamW "
             "| × optax AdamW | × torch fused AdamW | arguments MiB | temporaries MiB "
             "| aim ≤ 1.3× gradx AdamW |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    adamw = _adamw_row(result)
    if adamw:
        base = adamw["timings"]
        for lib in ("gradx", "optax", "torch-fused", "torch-foreach"):
            if lib in base:
                m = (adamw.get("memory") or {}).get(lib)
                lines.append(
                    f"| adamw (baseline) | {lib} | {_ms(base[lib]['median_s'])} | "
                    f"{_ms(base[lib].get('min_s', base[lib]['median_s']))} | "
                    + " | ".join(_x(base[lib]["median_s"] / base[ref]["median_s"])
                                 if ref in base else "—"
                                 for ref in ("gradx", "optax", "torch-fused"))
                    + f" | {_mib(m, 'argument_size_in_bytes')} | "
                    f"{_mib(m, 'temp_size_in_bytes')} | |")
    for r in rows:
        aim = ("—" if r["library"] != "gradx" or r["x_gradx_adamw"] is None else
               "met" if r["x_gradx_adamw"] <= MATRIX_AIM else "**not met**")
        lines.append(f"| {r['recipe']} | {r['library']} | {_ms(r['median_s'])} | "
                     f"{_ms(r['min_s'])} | "
                     f"{_x(r['x_gradx_adamw'])} | {_x(r['x_optax_adamw'])} | "
                     f"{_x(r['x_torch_adamw'])} | {_mib(r['memory'], 'argument_size_in_bytes')} | "
                     f"{_mib(r['memory'], 'temp_size_in_bytes')} | {aim} |")
    return "\n".join(lines)


def refresh_table(result):
    """Shampoo and SOAP: the refresh step timed alone against the other steps, and the share of
    the 10-step batch the refresh takes."""
    rows = [r for r in matrix_rows(result) if r["refresh"]]
    if not rows:
        return ""
    lines = ["| recipe | library | refresh step ms | other steps ms (median) | refresh's share of "
             "the 10 steps | (refresh − other) / 10, × gradx AdamW |",
             "|---|---|---|---|---|---|"]
    adamw = _adamw_row(result)
    base = adamw["timings"]["gradx"]["median_s"] if adamw and "gradx" in adamw["timings"] else None
    for r in rows:
        f, k = r["refresh"], r["refresh_every"]
        total = f["refresh_step_s"] + (k - 1) * f["other_step_s"]
        extra = (f["refresh_step_s"] - f["other_step_s"]) / k
        lines.append(f"| {r['recipe']} | {r['library']} | {_ms(f['refresh_step_s'])} | "
                     f"{_ms(f['other_step_s'])} | {f['refresh_step_s'] / total:.0%} | "
                     f"{_x(extra / base) if base else '—'} |")
    return "\n".join(lines)


def lapack_text(result):
    """The LAPACK calls in each compiled step (one batched call per block shape is the aim)."""
    items = []
    for r in matrix_rows(result):
        calls = r["lapack_calls"]
        if calls:
            one = all(n == 1 for n in calls.values())
            items.append(f"- {r['library']} {r['recipe']}: " + ", ".join(
                f"`{k}`" + (f" ×{n}" if n > 1 else "") for k, n in sorted(calls.items()))
                + (" (one call per shape)" if one else " (**more than one call for a shape**)")
                + LAPACK_NOTES.get(r["recipe"], ""))
    return "\n".join(items)


LAPACK_NOTES = {"soap": "; the `ssyevd` calls are the first step's set-up, the refresh is the "
                        "`sgeqrf`/`sorgqr` pair (one power-iteration step)"}


def matrix_section(result, note=""):
    """The matrix optimizers' section of a record: heading, note, command and conditions, the
    table against AdamW, the refresh split, the LAPACK calls, the torch references."""
    rows = matrix_rows(result)
    if not rows:
        return ""
    m = result["machine"]
    first = rows[0]
    parts = [MATRIX_HEADING, ""]
    if note:
        parts += [note, ""]
    env = m.get("env") or {}
    parts += [
        f"Command: `{' '.join(f'{k}={v}' for k, v in env.items())}{' ' if env else ''}"
        f"{result['command']}` (started {result['started']}); {first['n_params']:,} params in "
        f"{first['n_leaves']} leaves. Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores, "
        f"{', '.join(m['devices'])}; jax {m['jax']}, optax {m['optax']}, torch {m['torch']} "
        f"({m['torch_threads']} threads). Load average at start "
        f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_at_start', []))}, at end "
        f"{', '.join(f'{x:.1f}' for x in result.get('loadavg_at_end', []))}.",
        "",
        f"Each timed batch is {first['refresh_every']} steps, so it holds exactly one "
        "preconditioner refresh (Shampoo's roots, SOAP's eigenbases; Muon has none); the "
        "figure is the batch over its steps, the median of the interleaved rounds. AdamW is the "
        "same tree's `adamw` row of the same run.",
        "", matrix_table(result)]
    refresh = refresh_table(result)
    if refresh:
        parts += ["", f"Refresh step against the other steps ({rows[0]['refresh_every']} steps "
                  "timed one by one, "
                  f"{next(r['refresh']['windows'] for r in rows if r['refresh'])} times; the "
                  "slowest phase is the refresh):", "", refresh]
    lapack = lapack_text(result)
    if lapack:
        parts += ["", "LAPACK calls in the compiled step (result shapes; the refresh's "
                  "decompositions, batched over every block of one shape):", "", lapack]
    refs = {(r["recipe"], r["reference"]) for r in rows if r["reference"]}
    if refs:
        parts += ["", "Torch references (`torch` rows):", ""] + [
            f"- {recipe}: {ref}" for recipe, ref in sorted(refs)]
    return "\n".join(parts) + "\n"


def replace_section(path, section, heading=MATRIX_HEADING):
    """``path`` with the section starting at ``heading`` (up to the next ``## `` heading or the
    end) replaced by ``section``, or ``section`` appended; the rest of the file is kept."""
    with open(path) as f:
        lines = f.read().split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        text = "\n".join(lines).rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "\n".join(lines[end:])
        text = ("\n".join(lines[:start]) + "\n" + section
                + ("\n" + tail if tail.strip() else ""))
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    print("wrote", path, "(section:", heading + ")")


def targets_table(result):
    lines = ["| target | measured | limit | |", "|---|---|---|---|"]
    for t in targets(result):
        lines.append(f"| {t['target']} | {t['measured']:.3f} | {t['limit']} | "
                     f"{'met' if t['met'] else '**not met**'} |")
    return "\n".join(lines)


def targets_text(result):
    """The targets, one line each, for the terminal."""
    return "\n".join(f"[{'met' if t['met'] else 'NOT MET'}] {t['target']}: {t['measured']:.3f} "
                     f"(limit {t['limit']})" for t in targets(result))


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
    fast = [lib for lib in ("gradx-fused", FLAT) if lib in libs]
    lines = ["| recipe | leaves | params | " + " | ".join(f"{lib} s" for lib in libs)
             + "".join(f" | {lib} / optax" for lib in fast) + " |",
             "|" + "---|" * (3 + len(libs) + len(fast))]
    for row in rows:
        c = row["compile_s"]
        ratios = "".join(f" | {c[lib] / c['optax']:.3f}" for lib in fast)
        lines.append(f"| {row['recipe']} | {row['n_leaves']} | {row['n_params']:,} | "
                     + " | ".join(f"{c[lib]:.2f}" for lib in libs) + ratios + " |")
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
    rows = targets(result)
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
        y = list(range(len(rows)))
        ax.barh(y, [t["measured"] / t["limit"] for t in rows],
                color=["tab:green" if t["met"] else "tab:red" for t in rows])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_yticks(y, [t["target"] for t in rows], fontsize=6)
        ax.invert_yaxis()
        ax.set(xlabel="measured / limit (met at 1 or less)", title="Targets")
        fig.tight_layout()
        path = os.path.join(out_dir, "targets.png")
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
    if targets(result):
        parts += ["", "## Targets (met when measured <= limit; bars: `benchmarks/out/targets.png`)",
                  "", targets_table(result)]
    parts += ["", "## Step time (median ms, ratio to optax, fraction of the bandwidth bound)", "",
              step_table(result.get("steps", []) + result.get("model", []))]
    if result.get("model"):
        parts += ["", f"`model` rows: {result['model'][0]['model']}, forward + backward + optimizer + "
                      "apply in one jit (torch: forward, backward, `optimizer.step`). Forward and "
                      "backward alone: " + ", ".join(
                          f"{fmt_ms(r['forward_backward_s'])} ms ({r['recipe']} row)"
                          for r in result["model"] if "forward_backward_s" in r) + "."]
    mem = memory_table(result.get("steps", []))
    if mem.count("\n") > 1:
        parts += ["", "## `compiled.memory_analysis()` of one donated step", "", mem]
    matrix = matrix_section(result)
    if matrix:
        parts += ["", matrix.rstrip("\n")]
    if result.get("compile"):
        parts += ["", "## Compile time (trace + lower + compile of one step) against leaf count", "",
                  compile_table(result["compile"])]
    return "\n".join(parts) + "\n"


def write_record(path, title, source, note, body):
    """A committed record (RESULTS.md, CONVERGENCE.md): title, what generated it, the note on
    the run's conditions, then the tables."""
    with open(path, "w") as f:
        f.write(f"# {title}\n\nGenerated by {source}.\n\n" + (note + "\n\n" if note else "")
                + body)
    print("wrote", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="?", default=os.path.join(os.path.dirname(__file__), "out", "results.json"))
    p.add_argument("--results-md", help="also write this RESULTS.md (title, table, plots' description)")
    p.add_argument("--note", default="", help="a paragraph to put in RESULTS.md (conditions of the run)")
    p.add_argument("--matrix-md", help="write only the matrix optimizers' section into this "
                   "existing record (replacing that section if there; --note goes into it)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        result = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(args.results))
    body = markdown(result)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(body)
    written = plots(result, out_dir)
    print("wrote", os.path.join(out_dir, "table.md"), *written)
    print(targets_text(result))
    matrix = matrix_section(result)
    if matrix:
        print(matrix)
    if args.matrix_md:
        if not matrix:
            raise SystemExit(f"{args.results}: no matrix recipe in the large regime")
        replace_section(args.matrix_md, matrix_section(result, args.note))
    if args.results_md:
        write_record(args.results_md, "Benchmark results",
                     "`benchmarks/report.py` from `make bench` (plots: "
                     "`benchmarks/out/step_vs_leaves.png`, `compile_vs_leaves.png`, `targets.png`)",
                     args.note, body)


if __name__ == "__main__":
    main()
