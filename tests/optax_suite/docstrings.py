"""Optax 0.2.8's docstring examples, run against gradx (``import gradx as optax``).

Each example (a ``doctest`` of an optax module's docstrings) runs with ``optax`` bound to gradx:
``sys.modules['optax']`` is gradx while it runs, so ``import optax`` inside an example gets
gradx too. An example counts when it passes with Optax itself (``optax_examples.txt``, written by
``--write-list``); those that gradx fails are listed, apart from the names gradx lacks and the
documented differences of ``expected.py`` (keys ``doctest::<name>``).

    python tests/optax_suite/docstrings.py             # gradx on those that pass with Optax
    python tests/optax_suite/docstrings.py --write-list  # record which pass with Optax 0.2.8

``tests/test_optax_docstrings.py`` runs them in ``make test``.
"""

import argparse
import contextlib
import doctest
import importlib
import io
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from optax_swap import optax_module_names  # noqa: E402

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Sub-packages outside gradx's scope (as in run.py): their examples run once gradx has them.
OPTIONAL = ("optax.assignment", "optax.losses", "optax.perturbations", "optax.projections")


def examples() -> list[doctest.DocTest]:
    """Every docstring example of optax's modules, by name, without duplicates."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for name in optax_module_names():
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional dependencies
            continue
        for test in finder.find(module):
            if test.examples and test.name not in found:
                found[test.name] = test
    return [found[name] for name in sorted(found)]


def in_scope(test: doctest.DocTest) -> bool:
    import gradx
    for namespace in OPTIONAL:
        if test.name.startswith(namespace) and not hasattr(gradx, namespace.split(".")[1]):
            return False
    return True


@contextlib.contextmanager
def optax_is(module):
    """``import optax`` gives ``module`` while the block runs, and ``from optax.<sub> import x``
    its ``<sub>`` (``optax.losses``, ``optax.contrib``...) where it has one."""
    from optax_swap import SUBMODULES
    names = ["optax"] + [f"optax.{sub}" for sub in SUBMODULES if hasattr(module, sub)]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({name: getattr(module, name[len("optax."):]) if "." in name else module
                        for name in names})
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def run(test: doctest.DocTest, library) -> tuple[bool, str]:
    """Runs one example with ``optax`` bound to ``library``; ``(passed, report)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    test = doctest.DocTest(test.examples, {"optax": library, "jax": jax, "jnp": jnp, "np": np},
                           test.name, test.filename, test.lineno, test.docstring)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with optax_is(library), contextlib.redirect_stdout(io.StringIO()):
        result = runner.run(test, out=out.write)
    return result.failed == 0, out.getvalue()


PASSING_LIST = Path(__file__).parent / "optax_examples.txt"
# Examples that take seconds (line searches, L-BFGS, eager loops): make optax-tests runs them,
# make test does not.
SLOW = ("optax._src.linesearch.", "optax._src.alias.lbfgs", "optax._src.alias.adafactor",
        "optax._src.alias.fromage", "optax._src.alias.lamb", "optax._src.alias.noisy_sgd",
        "optax.transforms._adding.add_noise")


def passing_with_optax() -> list[str]:
    """The examples that pass with Optax 0.2.8 (``--write-list`` records them)."""
    return PASSING_LIST.read_text().split()


def missing_name(report: str) -> str:
    """The optax name gradx lacks that an example uses, if that is why it failed."""
    match = re.search(r"AttributeError: module '(gradx[\w.]*)' has no attribute '(\w+)'", report)
    return f"{match.group(1)}.{match.group(2)}" if match else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optax", action="store_true", help="run them on Optax itself")
    parser.add_argument("--write-list", action="store_true",
                        help=f"record the examples that pass with Optax in {PASSING_LIST.name}")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 when the only failures are names gradx lacks")
    parser.add_argument("words", nargs="*", help="only the examples whose name has a word")
    args = parser.parse_args(argv)
    import gradx
    import optax
    tests = [t for t in examples() if not args.words or any(w in t.name for w in args.words)]
    if args.optax or args.write_list:  # every example, in gradx's scope or not
        passing = [t.name for t in tests if run(t, optax)[0]]
        print(f"{len(passing)} of {len(tests)} examples pass with Optax")
        if args.write_list:
            PASSING_LIST.write_text("\n".join(passing) + "\n")
        return 0
    counts, failures = check(t for t in tests if in_scope(t)
                             and t.name in set(passing_with_optax()))
    print(counts)
    for name, report in failures:
        print(f"\n=== {name}\n{report[-2000:]}")
    return 1 if failures or (counts["missing"] and not args.allow_missing) else 0


def check(tests) -> tuple[dict, list]:
    """Runs the examples on gradx; ``(counts, unexpected failures)``: an example that fails
    on a name gradx lacks counts as missing, one listed in ``expected.py`` as expected."""
    import gradx
    from expected import EXPECTED_DIFFERENCES
    counts = {"passed": 0, "missing": 0, "expected": 0, "failed": 0}
    failures = []
    for test in tests:
        passed, report = run(test, gradx)
        if passed:
            counts["passed"] += 1
        elif missing_name(report):
            counts["missing"] += 1
        elif f"doctest::{test.name}" in EXPECTED_DIFFERENCES:
            counts["expected"] += 1
        else:
            counts["failed"] += 1
            failures.append((test.name, report))
    return counts, failures


if __name__ == "__main__":
    sys.exit(main())
