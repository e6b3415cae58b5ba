"""``make bench``'s pipeline on tiny sizes (no timing is asserted): bench.py writes results.json
with every regime, library and figure the README and RESULTS.md promise, and report.py turns it
into the table and the two plots."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
JAX_LIBRARIES = {"gradx", "optax", "gradx-fused", "gradx-fused-flat"}
TORCH = {"torch-foreach", "torch-fused"}  # torch has AdamW, not Lion


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    tiny = ["--recipes", "adamw,lion", "--large-width", "64", "--large-layers", "1",
            "--many-leaves", "40", "--compile-leaves", "20,40", "--model-width", "32",
            "--model-depth", "2", "--model-batch", "4", "--repeats", "1", "--min-batch-s", "0.001",
            "--matrix-recipes", "", "--compile-recipes", "lion"]
    # No timing is asserted: skip XLA's optimisation passes (compiling dominates tiny sizes).
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    subprocess.run([sys.executable, str(BENCHMARKS / "bench.py"), *tiny, "--out", str(out)],
                   check=True, capture_output=True, timeout=600, env=env)
    subprocess.run([sys.executable, str(BENCHMARKS / "report.py"), str(out / "results.json")],
                   check=True, capture_output=True, timeout=600)
    return out, json.loads((out / "results.json").read_text())


def test_every_regime_recipe_and_library_is_measured(results):
    _, r = results
    assert {(row["regime"], row["recipe"]) for row in r["steps"]} == {
        (regime, recipe) for regime in ("large", "many-40") for recipe in ("adamw", "lion")}
    for row in r["steps"] + r["model"]:
        expected = JAX_LIBRARIES | (TORCH if row["recipe"] == "adamw" else set())
        assert set(row["timings"]) == expected, row["regime"]
        optax_s = row["timings"]["optax"]["median_s"]
        for t in row["timings"].values():
            assert t["median_s"] > 0 and t["ratio_to_optax"] == t["median_s"] / optax_s
    for row in r["model"]:  # the step without the optimizer, for the optimizer's share
        assert row["forward_backward_s"] > 0
        flat = row["timings"]["gradx-fused-flat"]
        assert flat["optimizer_fraction"] == 1 - row["forward_backward_s"] / flat["median_s"]
    for row in r["steps"]:
        assert row["memory"]["gradx"]["temp_size_in_bytes"] >= 0
        assert row["bound_s"] == pytest.approx(
            row["bound_bytes_per_param"] * row["n_params"] / (row["triad_GBps"] * 1e9))
    assert [row["n_leaves"] for row in r["compile"]] == sorted(row["n_leaves"] for row in r["compile"])
    assert all(set(row["compile_s"]) == JAX_LIBRARIES for row in r["compile"])
    assert r["bandwidth"]["triad_GBps"] > 0


def test_report_writes_the_table_and_the_plots(results):
    out, _ = results
    table = (out / "table.md").read_text()
    assert "## Step time" in table and "| large | adamw |" in table and "## Compile time" in table
    assert "## Targets" in table and "| flat path, many-40 lion: step x optax |" in table
    for name in ("step_vs_leaves.png", "compile_vs_leaves.png", "targets.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
