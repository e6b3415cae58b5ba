"""``make convergence``'s pipeline on the smoke size (no timing asserted): AdamW's learning-rate
sweep, the figures against its final loss, an optimizer gradx lacks skipped with a message, the
table, CONVERGENCE.md and both plots. Runs in this process, with XLA's optimisations off
(compiling dominates a 12-step run). Sophia's training step is exercised by
examples/second_order.py, which uses the same ``char_lm.train_step``."""

import contextlib
import importlib
import io
import json
import math
import pathlib
import sys
from unittest import mock

import jax
import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def convergence():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("convergence")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def smoke_run(convergence, tmp_path_factory):
    out = tmp_path_factory.mktemp("convergence")
    missing = convergence.Optimizer("no_such_optimizer", 1e-3, convergence._defaults, "missing")
    printed = io.StringIO()
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        with mock.patch.dict(convergence.OPTIMIZERS, {"missing": missing}), \
                contextlib.redirect_stdout(printed):
            convergence.main(["--size", "smoke", "--optimizers", "adamw,missing",
                              "--out", str(out), "--results-md", str(out / "CONVERGENCE.md")])
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_each_optimizer_is_swept_and_compared_with_adamw(convergence, smoke_run):
    _, result, printed = smoke_run
    assert "skipping missing: gradx.no_such_optimizer is not in this gradx yet" in printed
    assert result["skipped"] == ["missing"] and set(result["optimizers"]) == {"adamw"}
    size = convergence.SIZES["smoke"]
    params = convergence.char_lm.init_params(size.model)
    assert result["n_params"] == sum(x.size for x in jax.tree.leaves(params))
    for name, r in result["optimizers"].items():
        usual = convergence.OPTIMIZERS[name].usual_lr
        np.testing.assert_allclose(r["lrs"], [usual * f for f in convergence.SWEEP])
        for run in r["runs"]:
            assert run["steps"] == [0, 4, 8, 12] and len(run["train_loss"]) == 12
            assert run["seconds"] == sorted(run["seconds"]) and run["seconds"][0] == 0
            # Initial logits are nearly uniform over 256 bytes: loss ln 256.
            assert abs(run["val_loss"][0] - math.log(256)) < 0.02
        finals = [run["final_val_loss"] for run in r["runs"]]
        assert r["best_lr"] == r["lrs"][int(np.argmin(finals))] and r["final_val_loss"] == min(finals)
        assert r["buffers_per_param"] == 2.0  # AdamW: two param-sized buffers
    adamw = result["optimizers"]["adamw"]
    reached = [s for s, loss in zip(adamw["best"]["steps"], adamw["best"]["val_loss"])
               if loss <= adamw["final_val_loss"]]
    assert adamw["steps_to_adamw"] == reached[0] and adamw["steps_fraction"] == 1.0


def test_writes_the_tables_and_both_plots(smoke_run):
    out, result, _ = smoke_run
    table = (out / "table.md").read_text()
    assert "## Results" in table and "| adamw |" in table
    assert "Skipped (not in this gradx yet): missing." in table
    report = (out / "CONVERGENCE.md").read_text()
    assert report.startswith("# Convergence") and result["command"] in report and table in report
    for name in ("convergence_steps.png", "convergence_seconds.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_muon_orthogonalises_the_hidden_matrices_only(convergence):
    """Keller Jordan's recipe: Muon on the blocks' matrices, AdamW on the embeddings, positions,
    output layer and vectors; the state then holds one buffer per hidden-matrix parameter
    (the momentum) and two per other parameter (Adam's moments)."""
    size = convergence.SIZES["smoke"]
    params = convergence.char_lm.init_params(size.model)
    dims = convergence.hidden_matrices(params)
    block = dims["blocks"][0]
    assert {k: type(v["kernel"]).__name__ for k, v in block.items() if "kernel" in v} == \
        dict.fromkeys(("qkv", "proj", "fc", "fc_proj"), "MuonDimensionNumbers")
    assert dims["embed"] is None and dims["positions"] is None and dims["head"]["kernel"] is None
    assert block["qkv"]["bias"] is None and block["ln1"]["scale"] is None
    hidden = sum(block[k]["kernel"].size for block in params["blocks"]
                 for k in ("qkv", "proj", "fc", "fc_proj"))
    total = sum(x.size for x in jax.tree.leaves(params))
    muon = convergence.OPTIMIZERS["muon"]
    report = convergence.gradx.memory_report(convergence.build(muon, muon.usual_lr, size), params)
    assert report.buffers_per_param == pytest.approx((hidden + 2 * (total - hidden)) / total)
