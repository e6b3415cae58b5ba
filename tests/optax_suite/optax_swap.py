"""A pytest plugin that swaps gradx's names into Optax's modules, so that Optax's own test files
(shipped inside the optax wheel) test gradx.

Loaded with ``pytest -p optax_swap`` (this directory on ``sys.path``; ``run.py`` does it). At
configuration time, before any test module is imported:

1. every module of the installed optax package is imported (test files excepted);
2. each public object of Optax (a function, class or ``functools.partial`` defined in optax and
   reachable as ``optax.<name>`` or ``optax.<sub>.<name>``) is matched to gradx's object of the
   same public name: ``gradx.<sub>.<name>``; for ``optax.tree_utils.tree_<x>`` also
   ``gradx.tree.<x>``; for ``transforms`` and ``schedules`` (which Optax re-exports flat, as
   gradx does) also ``gradx.<name>``;
3. in every optax module, each attribute holding such a public object is replaced by gradx's;
   a public object gradx lacks is replaced by a stub that raises ``NotImplementedError("gradx
   lacks optax.<name>")`` when called, instantiated, checked against or inspected, so the tests
   of missing names fail with that message (``run.py`` counts them apart);
4. the ``FLAG_*`` message constants of ``optax._src.linesearch`` become gradx's.

Test helpers (``optax._src.test_utils``) are left alone. With ``GRADX_OPTAX_SWAP=0`` nothing is
swapped (to run the same files against Optax itself); with ``GRADX_OPTAX_MISSING=keep`` the names
gradx lacks keep Optax's objects (so a test that only uses one as a helper still tests gradx). Results are written, one JSON line per
test, to the file named by ``GRADX_OPTAX_RESULTS``.
"""

import functools
import importlib
import json
import os
import sys
import types
from pathlib import Path

SUBMODULES = ("assignment", "contrib", "experimental", "losses", "microbatching", "perturbations",
              "projections", "schedules", "second_order", "transforms", "tree", "tree_utils")
MISSING_MARKER = "gradx lacks optax."
# Sub-packages whose names Optax (and gradx) also export flat: optax.transforms.chain is
# optax.chain. Others (optax.tree.scale, optax.contrib.sam) are looked up in their own namespace.
FLAT = ("", "transforms", "schedules")
_UNTOUCHED = ("optax._src.test_utils",)


class _MissingMeta(type):
    def _fail(cls, *args, **kwargs):
        raise NotImplementedError(f"{MISSING_MARKER}{cls._optax_name}")

    __call__ = __instancecheck__ = __subclasscheck__ = _fail

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls._fail()


def missing_stub(public_name: str):
    """A stand-in for an Optax object that gradx lacks: any use raises ``NotImplementedError``."""
    return _MissingMeta(public_name.rsplit(".", 1)[-1], (), {"_optax_name": public_name})


def _is_optax_object(value) -> bool:
    if isinstance(value, functools.partial):
        return True
    if isinstance(value, types.ModuleType) or not callable(value):
        return False
    return str(getattr(value, "__module__", "") or "").startswith("optax")


def optax_module_names() -> list[str]:
    """Every module of the installed optax but its tests (``optax._src`` has no ``__init__``,
    so the files are walked, not the packages)."""
    import optax
    root = Path(optax.__file__).parent
    names = []
    for file in sorted(root.rglob("*.py")):
        name = ".".join(("optax",) + file.relative_to(root).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        if not name.endswith("_test") and name not in _UNTOUCHED:
            names.append(name)
    return names


def _optax_modules():
    for name in optax_module_names():
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional dependencies of some optax modules
            continue
    return [m for name, m in sorted(sys.modules.items())
            if (name == "optax" or name.startswith("optax.")) and name not in _UNTOUCHED
            and not name.endswith("_test") and m is not None]


def _public_names():
    """``{id(object): (object, [public names])}`` for Optax's public objects."""
    import optax
    found = {}
    spaces = [("", optax)] + [(f"{s}.", getattr(optax, s)) for s in SUBMODULES]
    for prefix, module in spaces:
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or not _is_optax_object(value):
                continue
            found.setdefault(id(value), (value, []))[1].append(prefix + name)
    return found


def _gradx_object(public: str):
    import gradx
    sub, _, name = public.rpartition(".")
    candidates = []
    if sub:
        candidates.append((sub, name))
        if sub == "tree_utils" and name.startswith("tree_"):
            candidates.append(("tree", name[len("tree_"):]))
    if sub in FLAT:
        candidates.append(("", name))
    for space, attr in candidates:
        module = gradx
        if space:
            module = getattr(gradx, space, None)
            if not isinstance(module, types.ModuleType):
                try:
                    module = importlib.import_module(f"gradx.{space}")
                except ImportError:
                    continue
        if hasattr(module, attr):
            return getattr(module, attr)
    return None


def swap(keep_missing: bool = False) -> dict:
    """Swaps gradx into optax; returns ``{'swapped': [...], 'missing': [...]}`` (public names).
    With ``keep_missing`` the names gradx lacks keep Optax's objects instead of a stub."""
    import gradx.linesearch as gradx_linesearch
    modules = _optax_modules()
    replacement, swapped, missing = {}, [], []
    for key, (value, names) in _public_names().items():
        ours = next((o for o in map(_gradx_object, names) if o is not None), None)
        if ours is None:
            ours = value if keep_missing else missing_stub("/".join(names))
            missing.append(names[0])
        else:
            swapped.append(names[0])
        replacement[key] = ours
    for module in modules:
        for name, value in list(vars(module).items()):
            if id(value) in replacement and not name.startswith("__"):
                setattr(module, name, replacement[id(value)])
    linesearch = sys.modules["optax._src.linesearch"]
    for name in dir(linesearch):
        if name.startswith("FLAG_") and hasattr(gradx_linesearch, name):
            setattr(linesearch, name, getattr(gradx_linesearch, name))
    return {"swapped": sorted(swapped), "missing": sorted(missing)}


def pytest_configure(config):
    if os.environ.get("GRADX_OPTAX_SWAP", "1") != "0":
        report = swap(keep_missing=os.environ.get("GRADX_OPTAX_MISSING") == "keep")
        out = os.environ.get("GRADX_OPTAX_NAMES")
        if out:
            with open(out, "w") as handle:
                json.dump(report, handle)


def _write(record):
    out = os.environ.get("GRADX_OPTAX_RESULTS")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        if report.when != "call" and report.outcome == "skipped":
            outcome = "skipped"
        elif report.when != "call":
            outcome = "error"
        else:
            outcome = report.outcome
        _write({"nodeid": report.nodeid, "outcome": outcome,
                "message": str(report.longrepr)[-3000:] if report.failed else ""})


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "outcome": "error",
                "message": str(report.longrepr)[-3000:]})
