"""reduce_on_plateau: optax.contrib's semantics on positive values, the negative-value fix
against a hand-worked sequence, dtypes and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.plateau import ReduceLROnPlateauState, reduce_on_plateau
from support import compare, make_params

# A positive loss with plateaus, small (< rtol) "improvements" and real ones.
LOSSES = [3.0, 2.0, 2.0, 2.0, 2.0, 1.9999, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0,
          0.9, 0.9]


def _scales(tx, values, params=None):
    """The state after each update (jitted), fed ``values`` one per step."""
    params = {"w": jnp.ones(3)} if params is None else params
    update = jax.jit(tx.update)
    state, states = tx.init(params), []
    for value in values:
        _, state = update(params, state, value=value)
        states.append(state)
    return states


@pytest.mark.parametrize("kwargs", [
    dict(factor=0.5, patience=2, cooldown=1),
    dict(factor=0.3, patience=1, accumulation_size=3, min_scale=0.1),
    dict(factor=0.5, patience=2, rtol=0.0, atol=0.05, cooldown=2),
], ids=["cooldown", "accumulation_min_scale", "atol"])
def test_matches_optax_on_positive_values(kwargs):
    values = lambda step, params: {"value": jnp.asarray(LOSSES[step])}
    _, state = compare(reduce_on_plateau(**kwargs), optax.contrib.reduce_on_plateau(**kwargs),
                       make_params(), n_steps=len(LOSSES), extra_args=values)
    assert type(state) is ReduceLROnPlateauState
    assert state._fields == optax.contrib.ReduceLROnPlateauState._fields
    assert float(state.scale) < 1.0   # the sequence does trigger cuts
    ours = [float(s.scale) for s in _scales(reduce_on_plateau(**kwargs), LOSSES)]
    theirs = [float(s.scale) for s in _scales(optax.contrib.reduce_on_plateau(**kwargs), LOSSES)]
    assert ours == theirs


def test_negative_values_hand_worked():
    """factor 0.5, patience 2, rtol 1e-4. Improvement iff v < best - 1e-4·|best|:
    step 0: -1 < inf              → best -1, plateau 0
    step 1: -1 < -1.0001? no      → plateau 1
    step 2: -1 < -1.0001? no      → plateau 2 = patience → scale 0.5, plateau 0
    step 3: no                    → plateau 1
    step 4: -2 < -1.0001          → best -2, plateau 0
    step 5: -2 < -2.0002? no      → plateau 1
    step 6: no                    → plateau 2 → scale 0.25, plateau 0
    Optax tests v < (1 - 1e-4)·best = -0.9999 for best = -1, which a flat -1 passes, so it
    never cuts."""
    values = [-1.0, -1.0, -1.0, -1.0, -2.0, -2.0, -2.0]
    states = _scales(reduce_on_plateau(factor=0.5, patience=2), values)
    assert [float(s.scale) for s in states] == [1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert [int(s.plateau_count) for s in states] == [0, 1, 0, 1, 0, 1, 0]
    assert [float(s.best_value) for s in states] == [-1, -1, -1, -1, -2, -2, -2]
    theirs = _scales(optax.contrib.reduce_on_plateau(factor=0.5, patience=2), values)
    assert [float(s.scale) for s in theirs] == [1.0] * 7


def test_negative_values_behave_like_positive_ones():
    """Shifted below zero, the same loss curve plateaus, and is cut, at the same steps (each
    change either clears the relative margin 1e-4·|best| in both runs or in neither)."""
    positive = _scales(reduce_on_plateau(factor=0.5, patience=2, cooldown=1), LOSSES)
    negative = _scales(reduce_on_plateau(factor=0.5, patience=2, cooldown=1),
                       [v - 10.0 for v in LOSSES])
    assert [float(s.scale) for s in negative] == [float(s.scale) for s in positive]


def test_absolute_tolerance_alone_matches_optax_below_zero():
    kwargs = dict(factor=0.5, patience=2, rtol=0.0, atol=0.01)
    values = [-1.0, -1.005, -1.0, -1.02, -1.02, -1.02, -1.025, -1.025]
    ours = [float(s.scale) for s in _scales(reduce_on_plateau(**kwargs), values)]
    theirs = [float(s.scale) for s in _scales(optax.contrib.reduce_on_plateau(**kwargs), values)]
    assert ours == theirs == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_patience_zero_cuts_at_the_first_bad_evaluation():
    values = [1.0, 1.0, 1.0, 0.5]
    ours = [float(s.scale) for s in _scales(reduce_on_plateau(factor=0.5, patience=0), values)]
    assert ours == [1.0, 0.5, 0.25, 0.25]
    # Optax cuts on each *improving* evaluation instead (its plateau count, reset to 0 by the
    # improvement, equals patience) and never on a bad one.
    theirs = _scales(optax.contrib.reduce_on_plateau(factor=0.5, patience=0), values)
    assert [float(s.scale) for s in theirs] == [0.5, 0.5, 0.5, 0.25]


def test_dtypes_and_chain():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    tx = gradx.chain(gradx.scale(-1.0), reduce_on_plateau(factor=0.5, patience=1))
    state = tx.init(params)
    theirs = optax.contrib.reduce_on_plateau().init(params)
    assert state[1].scale.dtype == theirs.scale.dtype == jnp.bfloat16
    assert state[1].best_value.dtype == theirs.best_value.dtype == jnp.float32
    assert state[1].avg_value.dtype == jnp.float32
    update = jax.jit(tx.update)
    for value in (1.0, 1.0, 1.0):
        updates, state = update(params, state, value=value, unused_extra=0)
    assert {k: v.dtype for k, v in updates.items()} == {"a": jnp.bfloat16, "b": jnp.float32}
    np.testing.assert_array_equal(np.asarray(updates["b"]), -0.25 * np.ones(3))
    with pytest.raises(TypeError):
        reduce_on_plateau().update(params, reduce_on_plateau().init(params))


def test_exported_from_gradx_when_wired():
    if hasattr(gradx, "reduce_on_plateau"):
        assert gradx.reduce_on_plateau is reduce_on_plateau
        assert gradx.ReduceLROnPlateauState is ReduceLROnPlateauState


@pytest.mark.parametrize("kwargs,match", [
    (dict(factor=1.0), r"factor must be in \(0.0, 1.0\), got factor=1.0"),
    (dict(factor=0.0), r"factor must be in \(0.0, 1.0\), got factor=0.0"),
    (dict(rtol=-1e-3), r"rtol must be in \[0.0, 1.0\], got rtol=-0.001"),
    (dict(rtol=1.5), r"rtol must be in \[0.0, 1.0\], got rtol=1.5"),
    (dict(atol=-1.0), r"atol must be >= 0, got atol=-1.0"),
    (dict(rtol=0.0, atol=0.0), r"At least one of rtol or atol must be positive, got rtol=0.0 "
                               r"and atol=0.0"),
    (dict(patience=-1), r"patience must be >= 0, got patience=-1"),
    (dict(cooldown=-2), r"cooldown must be >= 0, got cooldown=-2"),
    (dict(accumulation_size=0), r"accumulation_size must be > 0, got accumulation_size=0"),
    (dict(min_scale=-0.1), r"min_scale must be >= 0, got min_scale=-0.1"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reduce_on_plateau(**kwargs)
