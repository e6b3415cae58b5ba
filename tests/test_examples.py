"""Every script in examples/ runs with --smoke (as CI does) and writes its plots."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
OUT = EXAMPLES / "out"

# The PNGs each example is documented to write; an example not listed must write at least one
# PNG named after itself (examples/out/<name>*.png).
PLOTS = {
    "quickstart": ["quickstart_loss.png"],
    "optimizer_race": ["optimizer_race_digits.png", "optimizer_race_2d.png"],
    "port_from_pytorch": ["port_from_pytorch.png"],
    "finetune_param_groups": ["finetune_param_groups.png"],
    "schedules": ["schedules.png"],
    "accumulation_mixed_precision": ["accumulation_mixed_precision.png"],
    "second_order": ["second_order.png"],
}
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
# examples/distributed.py --smoke (two processes and a one-process reference) runs once, in
# tests/test_sharding.py::test_two_processes_match_one_process, which also checks its plot.
RUN_ELSEWHERE = {"distributed"}


def test_every_documented_example_exists():
    assert set(PLOTS) <= {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.stem not in RUN_ELSEWHERE],
                         ids=lambda p: p.stem)
def test_example_runs_with_smoke_and_writes_its_plots(script):
    started = time.time() - 1
    # Smoke runs only check that the scripts work: skip XLA's optimisation passes (compiling
    # dominates a few-step run) and the progress bars.
    env = dict(os.environ, MPLBACKEND="Agg", TQDM_DISABLE="1", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    result = subprocess.run([sys.executable, str(script), "--smoke"], cwd=EXAMPLES.parent,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    written = {p.name for p in OUT.glob("*.png") if p.stat().st_mtime >= started}
    expected = PLOTS.get(script.stem)
    if expected is None:
        assert any(name.startswith(script.stem) for name in written), (
            f"{script.name} wrote no examples/out/{script.stem}*.png; wrote {sorted(written)}")
    else:
        assert set(expected) <= written, f"{script.name} wrote {sorted(written)}, not {expected}"
        for name in expected:
            assert (OUT / name).stat().st_size > 10_000, f"{name} looks empty"
