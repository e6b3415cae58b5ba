"""Every public name of Optax 0.2.8 resolves at the same path in gradx, with the same signature,
and names that are one object in Optax (re-exports) are one object in gradx.

The public names are enumerated from the installed optax: the top level and each public
sub-module (``optax.contrib`` included), plus ``optax.experimental.aggregating``. A module-valued
name counts only when it is a sub-module of the module enumerated (``optax.losses`` from
``optax``), not an import such as ``functools``; names re-exported from ``typing`` are skipped.
"""

import inspect
import types
import typing

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

MODULES = ("", "assignment", "contrib", "experimental", "experimental.aggregating", "losses",
           "microbatching", "perturbations", "projections", "schedules", "second_order",
           "transforms", "tree", "tree_utils")

def _resolve(root, path):
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root


def _public_names(path):
    module = _resolve(optax, path)
    names = []
    for name in dir(module):
        value = getattr(module, name)
        if name.startswith("_") or getattr(typing, name, None) is value:
            continue
        if isinstance(value, types.ModuleType) and not value.__name__.startswith(module.__name__ + "."):
            continue
        names.append(name)
    return names


OPTAX_NAMES = [f"{path}.{name}" if path else name for path in MODULES for name in _public_names(path)]


def _gradx(qualified):
    try:
        return _resolve(gradx, qualified)
    except AttributeError:
        return None


def test_enumeration_finds_every_optax_module_and_name():
    counts = {path: len(_public_names(path)) for path in MODULES}
    assert counts["losses"] == 32 and counts["tree"] == 35 and counts["tree_utils"] == 36
    assert counts["transforms"] == 46 and counts["schedules"] == 21 and counts["contrib"] == 58
    assert counts["projections"] == 12 and counts["microbatching"] == 6
    assert len(OPTAX_NAMES) == 496


def test_every_optax_name_resolves_at_the_same_path():
    missing = [name for name in OPTAX_NAMES if _gradx(name) is None]
    assert not missing, f"{len(missing)} Optax names missing from gradx: {missing}"


def test_one_object_in_optax_is_one_object_in_gradx():
    """Re-exports stay re-exports: where two Optax paths hold the same function or class, the
    two gradx paths do too (``optax.tree.norm is optax.tree_utils.tree_norm``)."""
    by_id = {}
    for name in OPTAX_NAMES:
        value = _resolve(optax, name)
        if callable(value):
            by_id.setdefault(id(value), []).append(name)
    split = []
    for names in by_id.values():
        objects = {id(_gradx(name)) for name in names}
        if len(objects) > 1:
            split.append(names)
    assert not split, f"one object in Optax, several in gradx: {split}"


def _simple(value):
    return value is inspect.Parameter.empty or value is None or type(value) in (bool, int, float, str)


def _parameters(function):
    return [(p.name if p.kind is not p.VAR_POSITIONAL else "*", p.kind,
             p.default if _simple(p.default) else "<object>")
            for p in inspect.signature(function).parameters.values()]


def test_signatures_match_optax():
    """Optax's parameters (names, kinds, plain defaults) are a prefix of gradx's; anything gradx
    adds comes after them, with a default."""
    different = []
    for name in OPTAX_NAMES:
        optax_value, gradx_value = _resolve(optax, name), _gradx(name)
        if (gradx_value is None or isinstance(optax_value, type) or not callable(optax_value)
                or not inspect.isroutine(optax_value) and not isinstance(optax_value, types.FunctionType)):
            continue
        try:
            expected, actual = _parameters(optax_value), _parameters(gradx_value)
        except (TypeError, ValueError):
            continue
        extra = actual[len(expected):]
        if actual[:len(expected)] != expected or any(d is inspect.Parameter.empty for *_, d in extra):
            different.append(f"{name}: optax {expected} vs gradx {actual}")
    assert not different, "\n".join(different)


DEPRECATED = {  # names Optax serves from a module __getattr__, with a DeprecationWarning
    "tree_utils.tree_scalar_mul": "tree_utils.tree_scale",
    "tree_utils.tree_add_scalar_mul": "tree_utils.tree_add_scale",
    "tree_utils.tree_l1_norm": None, "tree_utils.tree_l2_norm": None,
    "tree_utils.tree_linf_norm": None,
}


@pytest.mark.parametrize("name", sorted(DEPRECATED))
def test_deprecated_names_warn_as_in_optax(name):
    with pytest.warns(DeprecationWarning):
        expected = _resolve(optax, name)
    with pytest.warns(DeprecationWarning, match=name.split(".")[-1]):
        actual = _resolve(gradx, name)
    if DEPRECATED[name]:
        assert actual is _resolve(gradx, DEPRECATED[name])
    else:
        tree = {"a": jnp.array([1.0, -3.0]), "b": jnp.array(2.0)}
        np.testing.assert_allclose(actual(tree), expected(tree), rtol=1e-6)
