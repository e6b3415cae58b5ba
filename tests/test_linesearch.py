"""Backtracking and zoom line searches against optax 0.2.8, step by step under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_trees_close, make_params

# -- objectives and a side-by-side runner (also used by test_lbfgs.py) ---------------------------

_rng = np.random.default_rng(7)
CURVATURES = jax.tree.map(lambda p: jnp.asarray(_rng.uniform(1.0, 3.0, p.shape), jnp.float32),
                          make_params())
CENTERS = jax.tree.map(lambda p: jnp.asarray(_rng.normal(size=p.shape), jnp.float32), make_params())


def quadratic(params):
    """A well-conditioned separable quadratic over the multi-leaf tree (minimum at CENTERS)."""
    terms = jax.tree.map(lambda a, p, c: 0.5 * jnp.sum(a * (p - c) ** 2), CURVATURES, params, CENTERS)
    return sum(jax.tree.leaves(terms))


def rosenbrock(params):
    """Rosenbrock's function on a two-leaf tree, coupled across the leaves (minimum at ones)."""
    x = jnp.concatenate([params["x"], params["y"].reshape(-1)])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


ROSENBROCK_START = {"x": jnp.array([-1.2, 1.0]), "y": jnp.array([[0.5, -0.3]])}


def negate(lib):
    """``scale(-1.)`` built from the library's ``stateless`` (same numbers as optax.scale(-1.))."""
    return lib.stateless(lambda updates, params: jax.tree.map(lambda u: -u, updates))


def trajectory(tx, objective, params, n_steps, from_state=False, **extra_args):
    """Runs ``n_steps`` jitted iterations of ``tx`` on ``objective``; returns the per-step
    ``(updates, state)`` and the final params. ``from_state`` reuses the line search's value
    and gradient."""
    value_and_grad = (gradx.value_and_grad_from_state(objective) if from_state else
                      lambda p, state: jax.value_and_grad(objective)(p, **extra_args))

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective, **extra_args)
        return jax.tree.map(lambda p, u: p + u, params, updates), updates, state

    state = tx.init(params)
    history = []
    for _ in range(n_steps):
        params, updates, state = step(params, state)
        history.append((updates, state))
    return history, params


def assert_same_trajectory(ours, theirs, what=""):
    for step, ((u, s), (eu, es)) in enumerate(zip(ours, theirs)):
        assert_trees_close(u, eu, what=f"{what} updates at step {step}")
        assert_trees_close(s, es, what=f"{what} state at step {step}")


def compare_with_optax(make, objective, params, n_steps, direction=negate, **extra_args):
    """``chain(direction, line search)`` in gradx and optax: same updates and states."""
    ours, final = trajectory(gradx.chain(direction(gradx), make(gradx)), objective, params,
                             n_steps, **extra_args)
    theirs, _ = trajectory(optax.chain(direction(optax), make(optax)), objective, params,
                           n_steps, **extra_args)
    assert_same_trajectory(ours, theirs)
    return ours, final


# -- state classes ---------------------------------------------------------------------------------

def test_state_classes_match_optax():
    from optax._src import linesearch as optax_linesearch
    assert gradx.ScaleByBacktrackingLinesearchState._fields == optax.ScaleByBacktrackingLinesearchState._fields
    assert gradx.BacktrackingLinesearchInfo._fields == optax_linesearch.BacktrackingLinesearchInfo._fields
    assert gradx.ScaleByZoomLinesearchState._fields == optax.ScaleByZoomLinesearchState._fields
    assert gradx.ZoomLinesearchInfo._fields == optax.ZoomLinesearchInfo._fields
    params = make_params()
    for ours, theirs in [
            (gradx.scale_by_backtracking_linesearch(5, store_grad=True),
             optax.scale_by_backtracking_linesearch(5, store_grad=True)),
            (gradx.scale_by_zoom_linesearch(5), optax.scale_by_zoom_linesearch(5))]:
        a, b = ours.init(params), theirs.init(params)
        assert type(a).__name__ == type(b).__name__
        assert [x.dtype for x in jax.tree.leaves(a)] == [x.dtype for x in jax.tree.leaves(b)]
        assert_trees_close(a, b)


# -- backtracking -------------------------------------------------------------------------------

def test_backtracking_matches_optax_on_quadratic():
    # Gradient steps with a growing guess: the search backtracks.
    history, _ = compare_with_optax(
        lambda lib: lib.scale_by_backtracking_linesearch(15, increase_factor=3.0), quadratic,
        make_params(), 6)
    steps = [int(s[-1].info.num_linesearch_steps) for _, s in history]
    assert max(steps) > 1, steps


def test_backtracking_matches_optax_with_tolerances_and_data():
    def objective(params, data):
        return quadratic(params) + jnp.sum(data * params["head"])

    data = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
    compare_with_optax(
        lambda lib: lib.scale_by_backtracking_linesearch(
            10, slope_rtol=0.3, decrease_factor=0.5, max_learning_rate=0.9, atol=1e-3, rtol=1e-4),
        objective, make_params(), 5, data=data)


def test_backtracking_store_grad_reuses_value_and_grad():
    make = lambda lib: lib.scale_by_backtracking_linesearch(15, store_grad=True)
    ours, params = trajectory(gradx.chain(negate(gradx), make(gradx)), rosenbrock,
                              ROSENBROCK_START, 6, from_state=True)
    theirs, _ = trajectory(optax.chain(negate(optax), make(optax)), rosenbrock, ROSENBROCK_START,
                           6, from_state=True)
    assert_same_trajectory(ours, theirs)
    # Reusing the stored pair is exactly the same as recomputing it.
    fresh, _ = trajectory(gradx.chain(negate(gradx), make(gradx)), rosenbrock, ROSENBROCK_START, 6)
    for (u, _), (v, _) in zip(ours, fresh):
        assert_trees_close(u, v, rtol=0, atol=0)
    value, grad = jax.value_and_grad(rosenbrock)(params)
    assert_trees_close(ours[-1][1][-1].value, value)
    assert_trees_close(ours[-1][1][-1].grad, grad)


def test_backtracking_never_steps_into_nan():
    # log is NaN for negative arguments: every trial point is outside the domain.
    def objective(params):
        return jnp.sum(jnp.log(params))

    tx = gradx.scale_by_backtracking_linesearch(3)
    params = jnp.array([1.0, 2.0])
    u = jnp.array([-10.0, -10.0])
    out, state = jax.jit(lambda u, s: tx.update(u, s, params, value=objective(params),
                                                grad=1.0 / params, value_fn=objective))(
        u, tx.init(params))
    theirs, their_state = optax.scale_by_backtracking_linesearch(3).update(
        u, optax.scale_by_backtracking_linesearch(3).init(params), params,
        value=objective(params), grad=1.0 / params, value_fn=objective)
    np.testing.assert_array_equal(out, np.zeros(2))
    assert float(state.learning_rate) == 0.0 and np.isinf(state.info.decrease_error)
    assert int(state.info.num_linesearch_steps) == 4
    assert_trees_close(state, their_state)


# -- zoom -------------------------------------------------------------------------------------

def test_zoom_matches_optax_on_quadratic():
    # Plain gradient steps: the first guess is too long, so the search zooms; the state keeps
    # the value and gradient at the new point, reused through value_and_grad_from_state.
    make = lambda lib: lib.scale_by_zoom_linesearch(15)
    ours, params = trajectory(gradx.chain(negate(gradx), make(gradx)), quadratic, make_params(),
                              5, from_state=True)
    theirs, _ = trajectory(optax.chain(negate(optax), make(optax)), quadratic, make_params(), 5)
    assert_same_trajectory(ours, theirs)
    assert max(int(s[-1].info.num_linesearch_steps) for _, s in ours) > 1
    state = ours[-1][1][-1]
    value, grad = jax.value_and_grad(quadratic)(params)
    assert_trees_close(state.value, value)
    assert_trees_close(state.grad, grad)
    assert float(state.info.decrease_error) == 0.0 and float(state.info.curvature_error) == 0.0


def test_zoom_matches_optax_on_rosenbrock_when_zooming_hard():
    # A tight curvature condition without the approximate decrease: many cubic, quadratic and
    # bisection trial points per search.
    history, _ = compare_with_optax(
        lambda lib: lib.scale_by_zoom_linesearch(
            25, curv_rtol=0.1, approx_dec_rtol=None, initial_guess_strategy="one"),
        rosenbrock, ROSENBROCK_START, 6)
    assert sum(int(s[-1].info.num_linesearch_steps) for _, s in history) > 30


def test_zoom_stops_at_max_learning_rate_like_optax():
    # The curvature condition needs a longer step than allowed: the maximal one is returned.
    history, _ = compare_with_optax(
        lambda lib: lib.scale_by_zoom_linesearch(3, max_learning_rate=1e-4, curv_rtol=0.01),
        rosenbrock, ROSENBROCK_START, 4)
    for _, state in history:
        assert float(state[-1].learning_rate) == np.float32(1e-4)
        assert int(state[-1].info.num_linesearch_steps) == 1
        assert float(state[-1].info.curvature_error) > 0


def test_zoom_falls_back_to_best_sufficient_decrease_like_optax():
    # A curvature condition too tight for the step budget: the search fails and returns the
    # sufficient-decrease point with the smallest value met, neither the last nor the first.
    def objective(x):
        return jnp.sum(x ** 2 + 0.5 * jnp.sin(8 * x))

    params, steps = jnp.array([1.5, -0.6]), 4
    grad = jax.grad(objective)(params)
    results = []
    for lib in (gradx, optax):
        tx = lib.scale_by_zoom_linesearch(steps, curv_rtol=1e-3, initial_guess_strategy="one")
        results.append(jax.jit(lambda s: tx.update(-grad, s, params, value=objective(params),
                                                    grad=grad, value_fn=objective))(
            tx.init(params)))
    (ours, our_state), (theirs, their_state) = results
    assert_trees_close(ours, theirs)
    assert_trees_close(our_state, their_state)
    assert float(our_state.info.curvature_error) > 0 and float(our_state.learning_rate) > 0
    assert float(our_state.value) < float(objective(params))


def test_zoom_verbose_reports_failure(capfd):
    tx = gradx.scale_by_zoom_linesearch(2, verbose=True)
    params = jnp.array([1.0, 2.0])
    objective = lambda p: jnp.sum(p ** 2)
    # An ascent direction: no step size decreases the objective. As in optax, the last step
    # size tried (here the halved guess) is returned, with a positive decrease error.
    update = jax.jit(lambda s: tx.update(params, s, params, value=objective(params),
                                         grad=2 * params, value_fn=objective))
    out, state = update(tx.init(params))
    jax.effects_barrier()
    printed = capfd.readouterr().out
    assert gradx.linesearch.FLAG_NO_STEPSIZE_FOUND in printed
    assert gradx.linesearch.FLAG_NOT_A_DESCENT_DIRECTION in printed
    assert_trees_close(out, 0.5 * params)
    assert float(state.info.decrease_error) > 0


# -- extra arguments and errors ----------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: gradx.scale_by_backtracking_linesearch(5),
                                  lambda: gradx.scale_by_zoom_linesearch(5)])
def test_extra_args_contract(make):
    tx = make()
    params = jnp.array([1.0, 2.0])
    state = tx.init(params)
    objective = lambda p, scale: scale * jnp.sum(p ** 2)
    with pytest.raises(TypeError, match="value_fn"):
        tx.update(-params, state, params, value=1.0, grad=params)
    with pytest.raises(TypeError, match="grad"):
        tx.update(-params, state, params, value=1.0, value_fn=objective)
    with pytest.raises(TypeError, match=r"not consumed by `value_fn`: \['other'\]"):
        tx.update(-params, state, params, value=5.0, grad=2 * params, value_fn=objective,
                  scale=1.0, other=3)
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(-params, state, value=5.0, grad=2 * params, value_fn=objective, scale=1.0)
    # Deliberate difference: a value_fn with **kwargs receives every extra argument.
    objective_kw = lambda p, **kw: kw["scale"] * jnp.sum(p ** 2)
    out, _ = jax.jit(lambda s: tx.update(-2 * params, s, params, value=5.0, grad=2 * params,
                                         value_fn=objective_kw, scale=1.0))(state)
    assert float(jnp.sum((params + out) ** 2)) < 5.0
    with pytest.raises(TypeError, match="not consumed"):
        optax.scale_by_zoom_linesearch(5).update(
            -2 * params, optax.scale_by_zoom_linesearch(5).init(params), params, value=5.0,
            grad=2 * params, value_fn=objective_kw, scale=1.0)


@pytest.mark.parametrize("make, message", [
    (lambda: gradx.scale_by_backtracking_linesearch(-1), r"max_backtracking_steps must be >= 0, got max_backtracking_steps=-1"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, slope_rtol=1.0), r"slope_rtol must be in \[0.0, 1.0\), got slope_rtol=1.0"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, decrease_factor=1.0), r"decrease_factor must be in \(0.0, 1.0\), got decrease_factor=1.0"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, increase_factor=0.0), r"increase_factor must be > 0, got increase_factor=0.0"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, max_learning_rate=0.0), r"max_learning_rate must be > 0, got max_learning_rate=0.0"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, atol=-1.0), r"atol must be >= 0, got atol=-1.0"),
    (lambda: gradx.scale_by_backtracking_linesearch(5, rtol=-1.0), r"rtol must be >= 0, got rtol=-1.0"),
    (lambda: gradx.scale_by_zoom_linesearch(0), r"max_linesearch_steps must be > 0, got max_linesearch_steps=0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, max_learning_rate=-1.0), r"max_learning_rate must be > 0, got max_learning_rate=-1.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, tol=-1.0), r"tol must be >= 0, got tol=-1.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, increase_factor=0.0), r"increase_factor must be > 0, got increase_factor=0.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, slope_rtol=-0.1), r"slope_rtol must be in \[0.0, 1.0\), got slope_rtol=-0.1"),
    (lambda: gradx.scale_by_zoom_linesearch(5, curv_rtol=0.0), r"curv_rtol must be > 0, got curv_rtol=0.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, approx_dec_rtol=-1.0), r"approx_dec_rtol must be >= 0, got approx_dec_rtol=-1.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, stepsize_precision=-1.0), r"stepsize_precision must be >= 0, got stepsize_precision=-1.0"),
    (lambda: gradx.scale_by_zoom_linesearch(5, initial_guess_strategy="two"), r"initial_guess_strategy must be one of \('one', 'keep'\), got initial_guess_strategy='two'"),
])
def test_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()
