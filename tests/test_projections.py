"""gradx.projections against optax 0.2.8 (values and gradients, on trees, inside and outside
each set), and the l1-sphere fix against the closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

TREE = {"w": jnp.array([[2.5, -0.3], [0.0, 1.2]]), "b": jnp.array(-0.5), "v": [jnp.array([0.1, -3.0])]}
SMALL = jax.tree.map(lambda x: 0.05 * x, TREE)  # inside the unit balls
A = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) + 1), TREE)


def _cases(p):
    return {
        "non_negative": lambda t: p.projection_non_negative(t),
        "box": lambda t: p.projection_box(t, jax.tree.map(lambda x: jnp.full(x.shape, -0.4), t),
                                          jax.tree.map(lambda x: jnp.full(x.shape, 0.8), t)),
        "hypercube": lambda t: {**t, "w": p.projection_hypercube(t["w"], 0.7)},  # Optax: arrays
        "simplex": lambda t: p.projection_simplex(t),
        "simplex_scale": lambda t: p.projection_simplex(t, 2.5),
        "l1_sphere": lambda t: p.projection_l1_sphere(t, 1.5),
        "l1_ball": lambda t: p.projection_l1_ball(t),
        "l2_sphere": lambda t: p.projection_l2_sphere(t, 2.0),
        "l2_ball": lambda t: p.projection_l2_ball(t),
        "linf_ball": lambda t: p.projection_linf_ball(t, 0.5),
        "vector": lambda t: p.projection_vector(t, A),
        "hyperplane": lambda t: p.projection_hyperplane(t, A, 0.3),
        "halfspace": lambda t: p.projection_halfspace(t, A, 0.3),
        "halfspace_inside": lambda t: p.projection_halfspace(t, A, 100.0),
    }


def _values_and_grads(p):
    weights = jax.tree.map(lambda x: jnp.sin(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)),
                           TREE)
    out = {}
    for name, fn in _cases(p).items():
        value_and_grad = jax.value_and_grad(
            lambda t: (gradx.tree.vdot(weights, fn(t)), fn(t)), has_aux=True)  # noqa: B023
        (_, value), grad = value_and_grad(TREE)
        out[name] = (value, grad)
        if name in ("l1_ball", "l2_ball", "l2_sphere"):  # inside the ball too
            (_, value), grad = value_and_grad(SMALL)
            out[name + "_small"] = (value, grad)
    return out


def test_projections_match_optax_values_and_gradients_under_jit():
    actual, expected = jax.jit(lambda: (_values_and_grads(gradx.projections),
                                        _values_and_grads(optax.projections)))()
    assert len(actual) == 14 + 3
    for name in expected:
        if name.startswith("l1_sphere"):
            continue  # Optax's is off the sphere where TREE has a zero (next test)
        for got, want in zip(jax.tree.leaves(actual[name]), jax.tree.leaves(expected[name])):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # the results lie in their sets
    np.testing.assert_allclose(gradx.tree.sum(actual["simplex_scale"][0]), 2.5, rtol=1e-6)
    np.testing.assert_allclose(gradx.tree.norm(actual["l1_ball"][0], ord=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(gradx.tree.norm(actual["l2_sphere_small"][0]), 2.0, rtol=1e-6)
    np.testing.assert_allclose(gradx.tree.vdot(A, actual["hyperplane"][0]), 0.3, rtol=1e-5)
    assert gradx.tree.allclose(actual["l1_ball_small"][0], SMALL)


def test_l1_sphere_puts_zero_coordinates_on_the_sphere():
    """Optax multiplies by sign(x) = 0 at zeros: [0, 0, 0.1] comes out with l1 norm 0.4."""
    x = jnp.array([0.0, 0.0, 0.1])
    y = jnp.array([-0.2, 0.0, 0.5, -1.5])  # outside the ball: no zero gets mass, same as Optax
    z = jnp.array([0.2, -0.1, 0.0, 0.3])

    @jax.jit
    def results():
        g, o = gradx.projections.projection_l1_sphere, optax.projections.projection_l1_sphere
        return g(x), o(x), g(y), o(y), g(z, 2.0), g(TREE, 1.5)

    gx, ox, gy, oy, gz, tree = results()
    np.testing.assert_allclose(gx, [0.3, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(ox, [0.0, 0.0, 0.4], rtol=1e-6)
    np.testing.assert_allclose(gy, oy, rtol=1e-6)
    # closed form inside the sphere: |z| + θ on every entry, θ = (scale - ‖z‖₁)/n, with z's signs
    np.testing.assert_allclose(gz, [0.55, -0.45, 0.35, 0.65], rtol=1e-6)
    np.testing.assert_allclose(gradx.tree.norm(tree, ord=1), 1.5, rtol=1e-6)  # TREE has a zero


def test_simplex_jvp_is_the_projection_on_the_active_face():
    x, direction = jnp.array([0.9, 0.1, -1.0, 0.4]), jnp.array([1.0, 2.0, 3.0, -1.0])
    out, tangent = jax.jvp(lambda v: gradx.projections.projection_simplex(v, 0.3), (x,), (direction,))
    _, expected = jax.jvp(lambda v: optax.projections.projection_simplex(v, 0.3), (x,), (direction,))
    np.testing.assert_allclose(tangent, expected, rtol=1e-6)
    np.testing.assert_allclose(tangent.sum(), 0.0, atol=1e-6)  # stays on the simplex
    assert np.all(np.asarray(tangent)[~np.asarray(out > 0)] == 0)


def test_box_and_hypercube_take_number_bounds_for_trees():
    """Optax maps number bounds as trees: they fail on any tree that is not a single array."""
    with pytest.raises(ValueError):
        optax.projections.projection_hypercube(TREE)
    clipped = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "b": jnp.array(0.0),
               "v": [jnp.array([0.1, 0.0])]}
    assert gradx.tree.allclose(gradx.projections.projection_hypercube(TREE), clipped)
    boxed = gradx.projections.projection_box(TREE, -0.4, jnp.array(0.8))
    assert gradx.tree.allclose(boxed, jax.tree.map(lambda x: jnp.clip(x, -0.4, 0.8), TREE))
    np.testing.assert_allclose(gradx.projections.projection_hypercube(jnp.array([-1.0, 0.5, 3.0]), 2.0),
                               optax.projections.projection_hypercube(jnp.array([-1.0, 0.5, 3.0]), 2.0))
