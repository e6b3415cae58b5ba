"""L-BFGS direction and value_and_grad_from_state against optax 0.2.8 and a dense BFGS reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close, compare, make_params
from test_linesearch import (ROSENBROCK_START, assert_same_trajectory, negate, quadratic,
                             rosenbrock, trajectory)


def lbfgs_chain(lib, linesearch, memory_size=10):
    """What ``lbfgs()`` is: the L-BFGS direction, negated, scaled by a line search."""
    return lib.chain(lib.scale_by_lbfgs(memory_size=memory_size), negate(lib), linesearch)


def test_state_matches_optax():
    assert gradx.ScaleByLBFGSState._fields == optax.ScaleByLBFGSState._fields
    params = make_params()
    ours, theirs = gradx.scale_by_lbfgs(4).init(params), optax.scale_by_lbfgs(4).init(params)
    assert [x.dtype for x in jax.tree.leaves(ours)] == [x.dtype for x in jax.tree.leaves(theirs)]
    assert_trees_close(ours, theirs)
    assert ours.diff_params_memory["conv"].shape == (4, 2, 3, 3, 4)


@pytest.mark.parametrize("scale_init_precond", [True, False])
def test_direction_matches_optax_through_memory_wraparound(scale_init_precond):
    # Memory of 3 over 6 steps: the ring buffer is overwritten.
    compare(gradx.scale_by_lbfgs(3, scale_init_precond), optax.scale_by_lbfgs(3, scale_init_precond),
            n_steps=6)


def test_direction_is_the_dense_bfgs_inverse_hessian_times_the_gradient():
    # Nocedal & Wright eq. 7.19: H ← V_iᵀ H V_i + ρ_i s_i s_iᵀ from H = γI, oldest pair first.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    hessian = a @ a.T + 4 * np.eye(4)
    grad = lambda w: hessian @ w + 1.0
    tx = gradx.scale_by_lbfgs(memory_size=2)
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(4, jnp.float32))
    ws = [rng.normal(size=4) for _ in range(4)]
    for w in ws:
        direction, state = update(jnp.asarray(grad(w), jnp.float32), state,
                                  jnp.asarray(w, jnp.float32))
    pairs = [(ws[i + 1] - ws[i], grad(ws[i + 1]) - grad(ws[i])) for i in (1, 2)]
    s, y = pairs[-1]
    h = (s @ y) / (y @ y) * np.eye(4)
    for s, y in pairs:
        rho = 1.0 / (y @ s)
        v = np.eye(4) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    np.testing.assert_allclose(direction, h @ grad(ws[-1]), rtol=2e-5, atol=1e-6)


def test_first_direction_is_the_gradient_capped_to_the_unit_ball():
    tx = gradx.scale_by_lbfgs()
    params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
    big = {"a": jnp.array([3.0, 0.0, 4.0]), "b": jnp.array(0.0)}
    small = jax.tree.map(lambda g: g / 50, big)
    update = jax.jit(tx.update)
    assert_trees_close(update(big, tx.init(params), params)[0], jax.tree.map(lambda g: g / 5, big))
    assert_trees_close(update(small, tx.init(params), params)[0], small)


def test_lbfgs_with_zoom_matches_optax_on_multi_leaf_quadratic():
    make = lambda lib: lbfgs_chain(lib, lib.scale_by_zoom_linesearch(
        20, initial_guess_strategy="one"))
    ours, _ = trajectory(make(gradx), quadratic, make_params(), 6, from_state=True)
    theirs, _ = trajectory(make(optax), quadratic, make_params(), 6, from_state=True)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("linesearch", ["zoom", "backtracking"])
def test_lbfgs_matches_optax_on_rosenbrock(linesearch):
    def make(lib):
        if linesearch == "zoom":
            return lbfgs_chain(lib, lib.scale_by_zoom_linesearch(20, initial_guess_strategy="one"),
                               memory_size=3)
        return lbfgs_chain(lib, lib.scale_by_backtracking_linesearch(20, store_grad=True),
                           memory_size=3)

    ours, _ = trajectory(make(gradx), rosenbrock, ROSENBROCK_START, 8, from_state=True)
    theirs, _ = trajectory(make(optax), rosenbrock, ROSENBROCK_START, 8, from_state=True)
    assert_same_trajectory(ours, theirs)


def test_lbfgs_converges_on_rosenbrock():
    tx = lbfgs_chain(gradx, gradx.scale_by_zoom_linesearch(20, initial_guess_strategy="one"))
    value_and_grad = gradx.value_and_grad_from_state(rosenbrock)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad,
                                   value_fn=rosenbrock)
        return (jax.tree.map(lambda p, u: p + u, params, updates), state), value

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=100))
    (params, _), values = run(ROSENBROCK_START)
    assert_trees_close(params, jax.tree.map(jnp.ones_like, ROSENBROCK_START), rtol=0, atol=1e-4)
    assert float(values[-1]) < 1e-8
    assert np.all(np.diff(np.asarray(values)) <= 0), "the zoom search only accepts decreases"


def test_lbfgs_validation_and_params():
    with pytest.raises(ValueError, match="memory_size must be > 0, got memory_size=0"):
        gradx.scale_by_lbfgs(memory_size=0)
    tx = gradx.scale_by_lbfgs()
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


# -- value_and_grad_from_state ---------------------------------------------------------------------

def test_value_and_grad_from_state_recomputes_only_without_a_finite_value():
    def objective(params, shift, *, scale):
        return scale * jnp.sum((params - shift) ** 2)

    tx = gradx.chain(negate(gradx), gradx.scale_by_zoom_linesearch(5))
    params = jnp.array([1.0, 2.0])
    value_and_grad = jax.jit(gradx.value_and_grad_from_state(objective))
    state = tx.init(params)
    value, grad = value_and_grad(params, 0.5, state=state, scale=2.0)   # value inf: recomputed
    expected = jax.value_and_grad(objective)(params, 0.5, scale=2.0)
    assert_trees_close((value, grad), expected)
    stored = (state[0], state[1]._replace(value=jnp.array(7.0), grad=jnp.array([3.0, 4.0])))
    assert_trees_close(value_and_grad(params, 0.5, state=stored, scale=2.0),
                       (7.0, jnp.array([3.0, 4.0])))
    nan = (state[0], state[1]._replace(value=jnp.array(jnp.nan)))
    assert_trees_close(value_and_grad(params, 0.5, state=nan, scale=2.0), expected)


def test_value_and_grad_from_state_errors():
    params = jnp.array([1.0, 2.0])
    value_and_grad = gradx.value_and_grad_from_state(lambda p: jnp.sum(p ** 2))
    no_grad = gradx.scale_by_backtracking_linesearch(5)   # store_grad=False keeps grad=None
    with pytest.raises(ValueError, match="Value or gradient not found in the state"):
        value_and_grad(params, state=no_grad.init(params))
    with pytest.raises(ValueError, match="Value or gradient not found in the state"):
        value_and_grad(params, state=gradx.scale_by_lbfgs().init(params))
    two = gradx.chain(gradx.scale_by_zoom_linesearch(5), gradx.scale_by_zoom_linesearch(5))
    with pytest.raises(KeyError, match="multiple values for 'value'"):
        value_and_grad(params, state=two.init(params))
