"""gradx.contrib.sam and normalize against optax 0.2.8 (transparent and opaque modes, float32
and bf16, state included), and the transparent-mode fixes: sync_period=1 is the outer optimizer,
booleans stay booleans, PRNG keys work."""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradx
from contrib_support import compare
from support import assert_trees_close, make_grads, make_params, run


def sgd_sam(lib, **kwargs):
    """The paper's SAM: sgd outside, one normalised ascent step inside."""
    return lib.contrib.sam(lib.sgd(0.1), lib.chain(lib.contrib.normalize(), lib.sgd(0.05)),
                           **kwargs)


def momentum_sam(lib, **kwargs):
    """An adversarial optimizer with state, so that reset_state matters."""
    return lib.contrib.sam(lib.sgd(0.1, momentum=0.9),
                           lib.chain(lib.contrib.normalize(), lib.sgd(0.05, momentum=0.5)),
                           **kwargs)


def test_transparent_sam_matches_optax():
    _, state = compare(momentum_sam(gradx), momentum_sam(optax))
    assert state._fields == optax.contrib.SAMState._fields


def test_transparent_sam_without_reset_matches_optax_in_bf16():
    kwargs = {"sync_period": 3, "reset_state": False}
    updates, _ = compare(momentum_sam(gradx, **kwargs), momentum_sam(optax, **kwargs),
                         params=make_params(jnp.bfloat16), n_steps=5)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def _loss(params):
    return sum(jnp.sum((1.0 + (jnp.arange(p.size) % 3).reshape(p.shape)) * (p - 0.3) ** 2)
               for p in jax.tree.leaves(params))


def test_opaque_sam_matches_optax():
    grad_fn = lambda params, i: jax.grad(_loss)(params)  # noqa: E731
    txs = [momentum_sam(lib, opaque_mode=True, sync_period=3) for lib in (gradx, optax)]

    @jax.jit
    def step(states, params):  # both in one compilation
        return [tx.update(jax.grad(_loss)(p), s, p, grad_fn=grad_fn)
                for tx, s, p in zip(txs, states, params)]

    params = [make_params()] * 2
    states = [tx.init(p) for tx, p in zip(txs, params)]
    for _ in range(3):
        (ua, sa), (ub, sb) = step(states, params)
        assert_trees_close(ua, ub, what="opaque SAM updates")
        params = [gradx.apply_updates(p, u) for p, u in zip(params, (ua, ub))]
        states = [sa, sb]
    assert_trees_close(states[0], states[1], what="opaque SAM state")
    assert states[0].cache is None


def test_opaque_sam_without_grad_fn_says_what_to_pass():
    tx, params = sgd_sam(gradx, opaque_mode=True), make_params()
    with pytest.raises(ValueError, match="grad_fn=grad_fn"):
        tx.update(params, tx.init(params), params)


def test_sync_period_one_is_the_outer_optimizer():
    """Optax's transparent SAM starts each outer step from the previous call's params, so with
    sync_period=1 it undoes every previous step; gradx's is plain sgd (as opaque mode is)."""
    plain = make_params()
    for step in range(3):  # sgd(0.1) by hand
        plain = jax.tree.map(lambda p, g: p - 0.1 * g, plain, make_grads(plain, step))
    ours = run(sgd_sam(gradx, sync_period=1), make_params(), 3)[1]
    theirs = run(sgd_sam(optax, sync_period=1), make_params(), 3)[1]
    assert_trees_close(ours, plain, rtol=1e-6)
    with pytest.raises(AssertionError):
        assert_trees_close(theirs, plain)


def test_states_keep_booleans_and_keys():
    """Optax mixes both branches as c·a + (1-c)·b: DoG's boolean turns int32 (the state's
    structure changes under scan/checkpoints), and an adversarial noise key fails outright."""
    params, grads = make_params(), make_grads(make_params(), 0)
    for lib, dtype in ((gradx, jnp.bool_), (optax, jnp.int32)):
        tx = lib.contrib.sam(lib.contrib.dog(), lib.chain(lib.contrib.normalize(), lib.sgd(0.1)))
        _, state = jax.eval_shape(tx.update, grads, tx.init(params), params)
        assert state.opt_state[1].is_init_step.dtype == dtype
    noisy = lambda lib: lib.contrib.sam(lib.sgd(0.1), lib.chain(  # noqa: E731
        lib.contrib.normalize(), lib.add_noise(0.01, 0.55, key=0), lib.sgd(0.1)))
    tx = noisy(gradx)
    _, state = jax.eval_shape(tx.update, grads, tx.init(params), params)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
    tx = noisy(optax)
    with pytest.raises(TypeError, match="key"):
        jax.eval_shape(tx.update, grads, tx.init(params), params)


@pytest.mark.parametrize("sync_period", [0, 1.5])
def test_bad_sync_period_raises(sync_period):
    with pytest.raises(ValueError, match="sync_period"):
        sgd_sam(gradx, sync_period=sync_period)
