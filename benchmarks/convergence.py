"""Convergence benchmark: second-order and matrix optimizers against AdamW on a small language model.

    .venv/bin/python benchmarks/convergence.py                # ~15 min on 2 CPU cores (make convergence)
    .venv/bin/python benchmarks/convergence.py --size gpu     # a larger model and run, for a GPU
    .venv/bin/python benchmarks/convergence.py --size smoke   # seconds: checks the pipeline only

A GPT-style character-level model (``benchmarks/char_lm.py``) is trained from scratch on the
Python standard library's own source files, the same batches and initial weights for every run.
Every optimizer gets the same schedule (linear warmup, then cosine decay to 10% of the peak; the
baseline is AdamW with it) and the same learning-rate sweep: its usual rate times 1/3, 1 and 3;
the rate with the lowest final validation loss is reported. An optimizer that gradx does not
have yet is skipped, with a message.

Reported for each optimizer at its best rate: the final validation loss; the steps and the
training wall-clock (compilation and evaluation excluded) to reach AdamW's final validation loss,
also as fractions of AdamW's own; the mean step time; the optimizer state's memory
(``gradx.memory_report``). Writes ``results.json``, ``table.md``, ``convergence_steps.png`` and
``convergence_seconds.png`` (validation loss against step and against seconds) to ``--out``
(default ``benchmarks/out/convergence``), and ``--results-md`` (``make convergence``:
``benchmarks/CONVERGENCE.md``).
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import char_lm
from report import write_record
import gradx


class Size(NamedTuple):
    model: char_lm.GPTConfig
    batch: int          # sequences per step
    steps: int
    warmup: int         # steps of linear warmup
    eval_every: int     # steps between validation losses
    eval_batches: int   # validation batches (fixed)
    corpus_bytes: int


SIZES = {
    "smoke": Size(char_lm.GPTConfig(seq_len=16, d_model=16, n_layers=1, n_heads=2), batch=4,
                  steps=12, warmup=2, eval_every=4, eval_batches=2, corpus_bytes=200_000),
    "cpu": Size(char_lm.GPTConfig(seq_len=64, d_model=64, n_layers=2, n_heads=4), batch=16,
                steps=1000, warmup=50, eval_every=50, eval_batches=8, corpus_bytes=5_000_000),
    "gpu": Size(char_lm.GPTConfig(seq_len=256, d_model=384, n_layers=6, n_heads=6), batch=64,
                steps=5000, warmup=250, eval_every=250, eval_batches=32, corpus_bytes=5_000_000),
}
SWEEP = (1 / 3, 1.0, 3.0)  # times each optimizer's usual learning rate
AUX_ADAM_LR = 3e-3  # Muon's AdamW, on the leaves it does not orthogonalise: AdamW's usual rate
# Shampoo: Meta's default blocks of 1024 (at the cpu size no axis is longer than 256, the
# vocabulary and the MLP width, so every matrix is one block and a root is an eigh of at most
# 256 x 256); roots every 10 steps, as SOAP's bases and Sophia's estimates: Meta's default,
# every step, would make the eigh calls most of each step's time on a CPU.
SHAMPOO_BLOCK = 1024
SHAMPOO_REFRESH_EVERY = 10


class Optimizer(NamedTuple):
    function: str    # the name of the gradx function
    usual_lr: float  # the middle of the sweep
    settings: Callable[[Size, Callable], dict]  # (size, schedule shape) -> other arguments
    description: str


def _defaults(size, shape):
    return {}


def hidden_matrices(params) -> dict:
    """Muon's dimension numbers: the transformer blocks' matrices (None elsewhere: AdamW)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: gradx.MuonDimensionNumbers() if x.ndim == 2 and path[0].key == "blocks"
        else None, params)


OPTIMIZERS = {
    "adamw": Optimizer("adamw", 3e-3, lambda size, shape: {"b2": 0.95, "weight_decay": 0.1},
                       "b1 0.9, b2 0.95, weight decay 0.1 (nanoGPT's)"),
    "sophia_g": Optimizer(
        "sophia_g", 3e-4, lambda size, shape: {"bs": size.batch * size.model.seq_len},
        "the authors' defaults (b1 0.965, b2 0.99, rho 0.04, weight decay 0.1, refresh every 10 "
        "steps), bs = tokens per batch; Gauss-Newton-Bartlett estimator"),
    "sophia_h": Optimizer("sophia", 3e-4, _defaults,
                          "Optax's defaults (b1 0.965, b2 0.99, gamma 0.01, weight decay 1e-4, "
                          "refresh every 10 steps); Hutchinson estimator"),
    "soap": Optimizer("soap", 3e-3, _defaults,
                      "the official defaults (betas 0.95, 0.95, weight decay 0.01, eigenbases "
                      "refreshed every 10 steps, every axis up to 10000 rotated)"),
    "shampoo": Optimizer(
        "shampoo", 3e-3,
        lambda size, shape: {"betas": (0.9, 0.95), "weight_decay": 0.1, "grafting": "adam",
                             "grafting_beta2": 0.95, "grafting_epsilon": 1e-8,
                             "max_preconditioner_dim": SHAMPOO_BLOCK,
                             "precondition_frequency": SHAMPOO_REFRESH_EVERY},
        "Meta's recipe, AdamW's settings grafted (betas 0.9, 0.95, decoupled weight decay 0.1, "
        "Adam grafting with epsilon 1e-8); Meta's defaults otherwise (epsilon 1e-12, eigh "
        f"roots, blocks of {SHAMPOO_BLOCK}: at the cpu size no axis is longer than 256, so every "
        f"matrix is one block); roots every {SHAMPOO_REFRESH_EVERY} steps (from step "
        f"{SHAMPOO_REFRESH_EVERY}), as SOAP's bases and Sophia's estimates, instead of Meta's "
        "every step, whose eigh calls would take most of each step on a CPU"),
    "muon": Optimizer(
        "muon", 0.02,
        lambda size, shape: {"muon_weight_dimension_numbers": hidden_matrices,
                             "adam_learning_rate": lambda c: AUX_ADAM_LR * shape(c),
                             "adam_b2": 0.95, "adam_weight_decay": 0.1},
        "Optax's defaults (beta 0.95, Nesterov, 5 Newton-Schulz steps) on the blocks' matrices; "
        "the embeddings, positions, output layer and vectors get Optax's (N)AdamW with the "
        f"baseline's settings (b2 0.95, weight decay 0.1) at peak rate {AUX_ADAM_LR} on the "
        "same schedule, as Keller Jordan's recipe"),
    "psgd_kron": Optimizer(
        "psgd_kron", 1e-3, _defaults,
        "psgd-jax's defaults (b1 0.9, no weight decay, factors fitted with probability 1 for "
        "500 steps then annealed towards 0.03, preconditioner lr 0.1); its usual rate, a third "
        "of AdamW's"),
}


def schedule_shape(size: Size) -> Callable:
    """The learning-rate schedule at peak 1: linear warmup, cosine decay to 0.1."""
    return gradx.warmup_cosine_decay_schedule(0.0, 1.0, size.warmup, size.steps, end_value=0.1)


def build(opt: Optimizer, lr, size: Size):
    """``opt`` at peak learning rate ``lr`` (a number, or a traced scalar inside the step)."""
    shape = schedule_shape(size)
    return getattr(gradx, opt.function)(learning_rate=lambda count: lr * shape(count),
                                        **opt.settings(size, shape))


def train(compiled, opt: Optimizer, lr: float, size: Size, train_data, evaluate) -> dict:
    """One run: validation losses every ``eval_every`` steps, the training seconds before each
    (compilation and evaluation excluded), every step's training loss. Stops at a non-finite
    loss (``diverged``)."""
    params = char_lm.init_params(size.model)
    state = build(opt, lr, size).init(params)
    rng = np.random.default_rng(0)
    record = {"lr": lr, "steps": [0], "val_loss": [evaluate(params)], "seconds": [0.0],
              "train_loss": [], "diverged": False}
    elapsed = 0.0
    for i in range(1, size.steps + 1):
        batch = char_lm.sample_batch(train_data, size.batch, size.model.seq_len, rng)
        start = time.perf_counter()
        params, state, value = compiled(params, state, batch, jnp.float32(lr))
        value = float(value)
        elapsed += time.perf_counter() - start
        record["train_loss"].append(value)
        if not np.isfinite(value):
            record["diverged"] = True
            break
        if i % size.eval_every == 0 or i == size.steps:
            record["steps"].append(i)
            record["val_loss"].append(evaluate(params))
            record["seconds"].append(elapsed)
    record["train_seconds"], record["n_steps"] = elapsed, len(record["train_loss"])
    record["final_val_loss"] = float("inf") if record["diverged"] else record["val_loss"][-1]
    return record


def first_reach(run: dict, target: float):
    """``(step, seconds)`` of the first validation loss at or below ``target``, or Nones."""
    for step, loss, seconds in zip(run["steps"], run["val_loss"], run["seconds"]):
        if loss <= target:
            return step, seconds
    return None, None


def summarize(results: dict) -> None:
    """Adds each optimizer's best run and its figures against AdamW's final validation loss."""
    for r in results.values():
        r["best"] = min(r["runs"], key=lambda run: run["final_val_loss"])
    base = results.get("adamw")
    target = base["best"]["final_val_loss"] if base else None
    base_reach = first_reach(base["best"], target) if base else (None, None)
    for r in results.values():
        best = r["best"]
        step, seconds = first_reach(best, target) if target is not None else (None, None)
        r.update({
            "best_lr": best["lr"], "final_val_loss": best["final_val_loss"],
            "best_at_sweep_edge": best["lr"] in (r["lrs"][0], r["lrs"][-1]),
            "steps_to_adamw": step, "seconds_to_adamw": seconds,
            "steps_fraction": step / base_reach[0] if step and base_reach[0] else None,
            "seconds_fraction": seconds / base_reach[1] if seconds and base_reach[1] else None,
            "step_ms": 1e3 * best["train_seconds"] / max(best["n_steps"], 1),
        })


def run_all(size: Size, names: list) -> dict:
    train_data, val_data = char_lm.load_corpus(size.corpus_bytes)
    val_rng = np.random.default_rng(1)
    val_batches = jnp.asarray(np.stack([
        char_lm.sample_batch(val_data, size.batch, size.model.seq_len, val_rng)
        for _ in range(size.eval_batches)]))
    config = size.model
    val_loss = jax.jit(lambda p, batches: jnp.mean(
        jax.lax.map(lambda b: char_lm.loss(p, b, config), batches)))
    evaluate = lambda params: float(val_loss(params, val_batches))  # noqa: E731
    params = char_lm.init_params(config)
    results = {}
    for name in names:
        opt = OPTIMIZERS[name]
        if not hasattr(gradx, opt.function):
            print(f"skipping {name}: gradx.{opt.function} is not in this gradx yet")
            continue
        lrs = [opt.usual_lr * f for f in SWEEP]
        state = build(opt, lrs[0], size).init(params)
        batch = char_lm.sample_batch(train_data, size.batch, config.seq_len,
                                     np.random.default_rng(0))
        start = time.perf_counter()
        step = char_lm.train_step(lambda lr, opt=opt: build(opt, lr, size), config)
        compiled = step.lower(params, state, batch, jnp.float32(lrs[0])).compile()
        compile_s = time.perf_counter() - start
        report = gradx.memory_report(build(opt, lrs[0], size), params)
        runs = []
        for lr in lrs:
            runs.append(train(compiled, opt, lr, size, train_data, evaluate))
            print(f"{name:>9} lr {lr:.3g}: final val loss {runs[-1]['final_val_loss']:.4f}, "
                  f"{runs[-1]['train_seconds']:.1f} s", flush=True)
        results[name] = {"function": f"gradx.{opt.function}", "description": opt.description,
                         "lrs": lrs, "runs": runs, "compile_s": compile_s,
                         "state_bytes": report.total_bytes,
                         "buffers_per_param": report.buffers_per_param}
    summarize(results)
    return {"size": size._asdict() | {"model": config._asdict()},
            "n_params": sum(x.size for x in jax.tree.leaves(params)),
            "corpus": {"train_bytes": len(train_data), "val_bytes": len(val_data),
                       "python": platform.python_version(), "files": len(char_lm.stdlib_files())},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "backend": jax.default_backend(), "devices": str(jax.devices())},
            "skipped": [n for n in names if n not in results], "optimizers": results}


# ----------------------------------------------------------------------------------------------
# Report

def _fmt(value, spec, suffix=""):
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown(result: dict) -> str:
    size, model = result["size"], result["size"]["model"]
    rows = ["| optimizer | best lr (swept) | final val loss | steps to AdamW's final loss | "
            "wall-clock to it | step time | optimizer state |", "|---|---|---|---|---|---|---|"]
    sweep = ["| optimizer | " + " | ".join(f"lr × {f:.3g}" for f in SWEEP) + " |",
             "|---" * (len(SWEEP) + 1) + "|"]
    settings = []
    for name, r in result["optimizers"].items():
        swept = ", ".join(f"{lr:.3g}" for lr in r["lrs"])
        edge = " †" if r["best_at_sweep_edge"] else ""
        steps = (_fmt(r["steps_to_adamw"], "d") + " (" + _fmt(r["steps_fraction"], ".2f", "x")
                 + ")") if r["steps_to_adamw"] else "not reached"
        seconds = (_fmt(r["seconds_to_adamw"], ".1f", " s") + " ("
                   + _fmt(r["seconds_fraction"], ".2f", "x") + ")") if r["seconds_to_adamw"] \
            else "not reached"
        rows.append(f"| {name} | {r['best_lr']:.3g}{edge} ({swept}) | {r['final_val_loss']:.4f} | "
                    f"{steps} | {seconds} | {r['step_ms']:.1f} ms | "
                    f"{r['state_bytes'] / 2 ** 20:.2f} MiB ({r['buffers_per_param']:.2f}x params) |")
        finals = [("diverged" if run["diverged"] else f"{run['final_val_loss']:.4f}")
                  for run in r["runs"]]
        sweep.append(f"| {name} (lr {r['lrs'][1]:.3g}) | " + " | ".join(finals) + " |")
        settings.append(f"- **{name}** (`{r['function']}`): {r['description']}.")
    skipped = result["skipped"]
    parts = [
        f"Model: {result['n_params']:,} parameters (d_model {model['d_model']}, "
        f"{model['n_layers']} layers, {model['n_heads']} heads, context {model['seq_len']} bytes); "
        f"batch {size['batch']} × {model['seq_len']} bytes; {size['steps']} steps, "
        f"{size['warmup']} of warmup then cosine decay to 10% of the peak (every optimizer). "
        f"Corpus: Python {result['corpus']['python']}'s standard library, top-level modules, "
        f"{result['corpus']['train_bytes']:,} bytes for training and "
        f"{result['corpus']['val_bytes']:,} held out; validation loss (nats per byte) on "
        f"{size['eval_batches']} fixed batches every {size['eval_every']} steps. Machine: "
        f"{result['machine']['platform']}, {result['machine']['cpus']} CPUs, JAX backend "
        f"{result['machine']['backend']}.",
        "", "## Results (each optimizer at its best learning rate)", "", *rows, "",
        "† best at the edge of the sweep: a better rate may lie outside it. Steps and wall-clock "
        "are to the first validation loss at or below AdamW's final one, with the fraction of "
        "AdamW's own; wall-clock is training time only (no compilation, no evaluation). Step "
        "time is the mean over the run (estimator refreshes included); memory is "
        "`gradx.memory_report` of the optimizer state.",
        "", "## Learning-rate sweep (final validation loss)", "", *sweep,
        "", "## Settings (every optimizer on the same schedule, its peak learning rate swept)", "",
        *settings]
    if skipped:
        parts += ["", "Skipped (not in this gradx yet): " + ", ".join(skipped) + "."]
    return "\n".join(parts) + "\n"


def plots(result: dict, out_dir: str, caption: str) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for axis, label, name in (("steps", "step", "convergence_steps.png"),
                              ("seconds", "training wall-clock (s)", "convergence_seconds.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for opt, r in result["optimizers"].items():
            best = r["best"]
            ax.plot(best[axis], best["val_loss"], marker=".", label=f"{opt} (lr {best['lr']:.3g})")
        if "adamw" in result["optimizers"]:
            ax.axhline(result["optimizers"]["adamw"]["final_val_loss"], color="gray", lw=0.8,
                       ls="--", label="AdamW's final loss")
        ax.set(xlabel=label, ylabel="validation loss (nats per byte)",
               title="Character-level GPT on the Python standard library")
        ax.legend(fontsize=8)
        fig.text(0.01, 0.01, caption, fontsize=6, wrap=True)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--steps", type=int, help="override the size's number of steps")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                   help=f"comma-separated, from {', '.join(OPTIMIZERS)}")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "out", "convergence"))
    p.add_argument("--results-md", help="also write this CONVERGENCE.md")
    p.add_argument("--note", default="", help="conditions of the run, for the report and plots")
    args = p.parse_args(argv)
    names = args.optimizers.split(",")
    unknown = sorted(set(names) - set(OPTIMIZERS))
    if unknown:
        p.error(f"unknown optimizers {unknown}; known: {list(OPTIMIZERS)}")
    size = SIZES[args.size]
    if args.steps:
        size = size._replace(steps=args.steps, eval_every=min(size.eval_every, args.steps))
    command = "python benchmarks/convergence.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    result = run_all(size, names)
    result.update({"command": command, "note": args.note})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    body = markdown(result)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(body)
    written = plots(result, args.out, f"{command}. {args.note}".strip())
    print(body)
    print("wrote", os.path.join(args.out, "results.json"), os.path.join(args.out, "table.md"),
          *written)
    if args.results_md:
        write_record(args.results_md, "Convergence: second-order and matrix optimizers against AdamW",
                     f"`{command}` (`make convergence`; plots: "
                     "`benchmarks/out/convergence/convergence_steps.png`, `convergence_seconds.png`)",
                     args.note, body)


if __name__ == "__main__":
    main()
