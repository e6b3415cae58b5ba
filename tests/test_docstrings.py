"""The examples in the docstrings run, and print what they say they print.

Every module of the ``gradx`` package (``torch_compat`` included) is searched with doctest's
finder; each docstring with examples is one test, run with ``jax``, ``jnp``, ``np`` and ``gradx``
already imported.
"""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx

GLOBS = {"jax": jax, "jnp": jnp, "np": np, "gradx": gradx}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The main entry points each show a runnable example.
MUST_HAVE_EXAMPLES = [
    "gradx.combine.chain", "gradx.optimizers.adamw", "gradx.optimizers.sgd",
    "gradx.partition.partition", "gradx.groups.label_by_path", "gradx.multi_steps.MultiSteps",
    "gradx.torch_compat.optimizers.adamw", "gradx.hyperparams.inject_hyperparams",
]


def _modules():
    names = ["gradx"] + [info.name for info in pkgutil.walk_packages(gradx.__path__, "gradx.")]
    return [importlib.import_module(name) for name in sorted(names)]


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for module in _modules():
        # The finder keeps only objects defined in `module`, so re-exports are not run twice.
        tests.extend(t for t in finder.find(module, module.__name__, globs=GLOBS) if t.examples)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def test_main_entry_points_have_examples():
    with_examples = {t.name for t in DOCTESTS}
    assert [name for name in MUST_HAVE_EXAMPLES if name not in with_examples] == []
