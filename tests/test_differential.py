"""Property-based differential tests (``tests/differential.py``): random pytrees × random
transformations against optax 0.2.8, and ``gradx.torch_compat`` against torch, a fixed
derandomized budget. ``make fuzz`` runs the same checks with a much larger one."""

import os

import pytest
from hypothesis import given

import differential as d

EXAMPLES = int(os.environ.get("GRADX_DIFFERENTIAL_EXAMPLES", 8))
TORCH_EXAMPLES = int(os.environ.get("GRADX_DIFFERENTIAL_TORCH_EXAMPLES", 3))


def _unexplained(case, problems):
    return [f"{p}\n  {case}" for p in problems if not d.explain(case, p)]


@d._settings(EXAMPLES, derandomize=True)
@given(d.cases())
def test_gradx_agrees_with_optax(case):
    assert not _unexplained(case, d.compare_case(case))


@d._settings(TORCH_EXAMPLES, derandomize=True)
@given(d.torch_cases())
def test_torch_compat_agrees_with_torch(case):
    pytest.importorskip("torch")
    assert not d.compare_torch_case(case)


def test_explanations_are_documented_differences():
    """Each explanation names a README row, and a case it covers does differ (so the
    comparison can fail): Optax's norm overflows on a lamb run with huge values."""
    assert all("README" in reason for reason, _ in d.EXPLANATIONS)
    case = d.Case(tree=0, dtype="float32", seed=1, fills=("huge",),
                  tx=("opt", "lamb", (("learning_rate", 0.05), ("b1", 0.9), ("b2", 0.999),
                                      ("eps", 1e-6), ("weight_decay", 0.0))))
    problems = d.compare_case(case)
    assert problems and all(d.explain(case, p).startswith("per-leaf norms") for p in problems)
