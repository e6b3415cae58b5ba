"""Sign-based rules: scale_by_sign and scale_by_lion against optax 0.2.8; scale_by_rprop (with
Optax's lag fixed) against a hand-worked sequence, torch.optim.Rprop and Optax's state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import gradx
from support import assert_trees_close, compare, donated_temporaries, make_grads, make_params, run


def test_scale_by_sign_matches_optax():
    compare(gradx.scale_by_sign(), optax.scale_by_sign())
    assert gradx.scale_by_sign().init(make_params()) == gradx.EmptyState()


LION_CASES = [
    {},
    {"mode": "smooth", "smooth_beta": 2.5},
    {"mode": "refined", "b1": 0.5},
    {"mu_dtype": jnp.bfloat16, "b2": 0.9},
    {"b1": 1.0},
]


@pytest.mark.parametrize("kwargs", LION_CASES,
                         ids=lambda k: "-".join(map(str, k.values())) or "hard")
def test_lion_matches_optax(kwargs):
    compare(gradx.scale_by_lion(**kwargs), optax.scale_by_lion(**kwargs))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lion_equals_optax_bit_for_bit_with_nan_and_signed_zeros(dtype):
    """The sign passes through a bfloat16 buffer: every value it takes (-1, ±0, 1, NaN) survives
    exactly. The large leaf takes that path; the small ones (0-d, empty, 16) the plain rule."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(512, 256)), dtype),
              "v": jnp.asarray(rng.normal(size=(16,)), dtype),
              "s": jnp.asarray(0.5, dtype), "e": jnp.zeros((0, 3), dtype)}
    signals = jnp.array([np.nan, -0.0, 0.0, np.inf], dtype)
    grads = {"w": jnp.asarray(rng.normal(size=(512, 256)), dtype).at[0, :4].set(signals),
             "v": jnp.asarray(rng.normal(size=(16,)), dtype).at[:4].set(signals),
             "s": jnp.asarray(-0.0, dtype), "e": jnp.zeros((0, 3), dtype)}
    results = []
    for lib in (gradx, optax):
        tx = lib.lion(1e-3)
        state, out = tx.init(params), []
        for _ in range(2):
            updates, state = jax.jit(tx.update)(grads, state, params)
            out.append((updates, state))
        results.append(out)
    def bits(x):  # the raw bits, so that -0.0 differs from 0.0 and NaN equals NaN
        x = np.asarray(x)
        return x.view({2: np.uint16, 4: np.uint32}[x.itemsize])

    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(bits(a), bits(b))


def test_lion_donated_step_does_not_copy_the_momentum():
    """Optax's donated Lion step copies the momentum (a temporary the size of the params), as the
    parameter update reads the old momentum that its kernel overwrites; gradx's needs at most
    the bfloat16 sign, half that size."""
    make = lambda lib: lib.lion(1e-3)  # noqa: E731
    theirs, leaf_bytes = donated_temporaries(make, optax)
    assert theirs >= leaf_bytes  # the oracle shows the problem the test guards
    assert donated_temporaries(make, gradx)[0] <= leaf_bytes // 2 + 1024


def test_lion_refined_is_linear_near_zero():
    """The refined mode keeps |x| < 1 as is: with b1 = 0 the first update is g where |g| < 1."""
    g = {"w": jnp.array([0.25, -0.5, 3.0, -2.0])}
    tx = gradx.scale_by_lion(b1=0.0, mode="refined")
    u, _ = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_array_equal(u["w"], [0.25, -0.5, 1.0, -1.0])


def test_bf16_params_keep_bf16():
    params = make_params(jnp.bfloat16)
    for ours, theirs in [(gradx.scale_by_sign(), optax.scale_by_sign()),
                         (gradx.scale_by_lion(), optax.scale_by_lion()),
                         (gradx.scale_by_rprop(0.1), None)]:
        updates, _, state = run(ours, params, n_steps=3)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        assert all(x.dtype in (jnp.bfloat16, jnp.int32) for x in jax.tree.leaves(state))
        if theirs is not None:
            assert_trees_close(updates, run(theirs, params, n_steps=3)[0], rtol=0, atol=0)


@pytest.mark.parametrize("factory,kwargs,match", [
    (gradx.scale_by_lion, {"mode": "soft"},
     r"mode must be one of \('hard', 'smooth', 'refined'\), got mode='soft'"),
    (gradx.scale_by_lion, {"b1": 1.5}, r"b1 must be in \[0.0, 1.0\], got b1=1.5"),
    (gradx.scale_by_lion, {"b2": 1.0}, r"b2 must be in \[0.0, 1.0\), got b2=1.0"),
    (gradx.scale_by_lion, {"mode": "smooth", "smooth_beta": 0.0},
     r"smooth_beta must be > 0, got smooth_beta=0.0"),
    (gradx.scale_by_rprop, {"learning_rate": 0.0},
     r"learning_rate must be > 0, got learning_rate=0.0"),
    (gradx.scale_by_rprop, {"learning_rate": 0.1, "eta_minus": 0.0},
     r"eta_minus must be in \(0.0, 1.0\], got eta_minus=0.0"),
    (gradx.scale_by_rprop, {"learning_rate": 0.1, "eta_plus": 0.9},
     r"eta_plus must be in \[1.0, inf\), got eta_plus=0.9"),
    (gradx.scale_by_rprop, {"learning_rate": 0.1, "min_step_size": -1.0},
     r"min_step_size must be >= 0, got min_step_size=-1.0"),
    (gradx.scale_by_rprop, {"learning_rate": 0.1, "max_step_size": 0.0},
     r"max_step_size must be > 0, got max_step_size=0.0"),
])
def test_validation_errors(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_rprop_rejects_a_schedule():
    with pytest.raises(TypeError, match=r"learning_rate is the initial step size .* "
                                        r"learning_rate=schedule\(0\)"):
        gradx.scale_by_rprop(lambda count: 0.1)


# Hand-worked Rprop (lr 0.1, eta -/+ 0.5/1.2, steps clipped to [0.06, 0.13]):
#   t  g              s = g·u_prev     step sizes           update (current step)
#   1  [ 1, -2,  0]   [0, 0, 0]        [.1, .1, .1]         [.1, -.1, 0]
#   2  [ 3,  1,  5]   [+, -, 0]        [.12, .06, .1]       [.12, 0, .1]      (.05 -> min .06)
#   3  [ 2, -1, -1]   [+, 0, -]        [.13, .06, .06]      [.13, -.06, 0]    (.144 -> max .13)
#   4  [-1,  0,  2]   [-, 0, 0]        [.065, .06, .06]     [0, 0, .06]
RPROP_GRADS = [[1.0, -2.0, 0.0], [3.0, 1.0, 5.0], [2.0, -1.0, -1.0], [-1.0, 0.0, 2.0]]
RPROP_STEPS = [[0.1, 0.1, 0.1], [0.12, 0.06, 0.1], [0.13, 0.06, 0.06], [0.065, 0.06, 0.06]]
RPROP_UPDATES = [[0.1, -0.1, 0.0], [0.12, 0.0, 0.1], [0.13, -0.06, 0.0], [0.0, 0.0, 0.06]]


def _run_rprop(tx):
    update = jax.jit(tx.update)
    state = tx.init({"w": jnp.zeros(3)})
    updates, steps = [], []
    for g in RPROP_GRADS:
        u, state = update({"w": jnp.array(g)}, state)
        updates.append(np.asarray(u["w"]))
        steps.append(np.asarray(state.step_sizes["w"]))
    return updates, steps, state


def test_rprop_hand_worked_and_optax_lag():
    kwargs = dict(learning_rate=0.1, min_step_size=0.06, max_step_size=0.13)
    ours, our_steps, our_state = _run_rprop(gradx.scale_by_rprop(**kwargs))
    np.testing.assert_allclose(ours, RPROP_UPDATES, rtol=2e-7, atol=1e-8)
    np.testing.assert_allclose(our_steps, RPROP_STEPS, rtol=2e-7)
    # Optax 0.2.8 keeps the same state but emits the previous call's update: its first update
    # is exactly 0 and the others lag a step (zeroed where the sign flipped).
    theirs, their_steps, their_state = _run_rprop(optax.scale_by_rprop(**kwargs))
    assert_trees_close(our_state, their_state, rtol=0, atol=0)
    np.testing.assert_array_equal(theirs[0], np.zeros(3))
    assert np.abs(ours[0]).max() > 0
    for t in range(1, 4):
        flipped = np.array(RPROP_GRADS[t]) * ours[t - 1] < 0
        np.testing.assert_array_equal(theirs[t], np.where(flipped, 0.0, ours[t - 1]))


def test_rprop_matches_torch():
    """gradx's scale_by_rprop followed by ``p - u`` is torch.optim.Rprop step for step."""
    params = make_params()
    tx = gradx.scale_by_rprop(0.05)
    update, state = jax.jit(tx.update), tx.init(params)
    leaves = jax.tree.leaves(params)
    torch_params = [torch.tensor(np.asarray(x), requires_grad=True) for x in leaves]
    opt = torch.optim.Rprop(torch_params, lr=0.05)
    for step in range(8):
        grads = make_grads(params, step)
        for tp, g in zip(torch_params, jax.tree.leaves(grads)):
            tp.grad = torch.tensor(np.asarray(g))
        opt.step()
        updates, state = update(grads, state)
        params = jax.tree.map(lambda p, u: p - u, params, updates)
        assert_trees_close(jax.tree.leaves(params), [t.detach().numpy() for t in torch_params],
                           what=f"params after step {step}")


def test_rprop_array_learning_rate_under_jit():
    params = make_params()

    @jax.jit
    def first_update(lr):
        tx = gradx.scale_by_rprop(lr)
        return tx.update(make_grads(params, 0), tx.init(params))

    updates, state = first_update(jnp.float32(0.2))
    assert isinstance(state, gradx.ScaleByRpropState)
    assert_trees_close(state.step_sizes, jax.tree.map(lambda p: jnp.full_like(p, 0.2), params))
    assert_trees_close(updates, jax.tree.map(lambda g: 0.2 * jnp.sign(g), make_grads(params, 0)))


def test_state_classes_have_optax_fields():
    assert gradx.ScaleByLionState._fields == optax.ScaleByLionState._fields
    assert gradx.ScaleByRpropState._fields == optax.ScaleByRpropState._fields
