"""``compare`` for the contrib tests: ``support.compare``'s check (equal updates at every step,
equal final params and state), with gradx's and the oracle's update compiled together in one
jitted function, which halves the compilation time that dominates these tests."""

import jax

from support import ATOL, RTOL, assert_trees_close, make_grads, make_params


def compare(ours, theirs, params=None, n_steps=6, extra_args=None, grads_fn=make_grads,
            rtol=RTOL, atol=ATOL):
    """Runs both transformations from ``params`` (``make_params()``), each on its own
    trajectory, for ``n_steps`` jitted steps; ``extra_args(step, params) -> dict`` gives the
    update's extra keyword arguments. Returns gradx's updates of every step and final state."""
    params = make_params() if params is None else params

    @jax.jit
    def step(grads, states, params, kwargs):
        return tuple(tx.update(g, s, p, **k) for tx, g, s, p, k in
                     zip((ours, theirs), grads, states, params, kwargs))

    params, states, history = (params, params), (ours.init(params), theirs.init(params)), []
    for i in range(n_steps):
        grads = tuple(grads_fn(p, i) for p in params)
        kwargs = tuple(extra_args(i, p) if extra_args else {} for p in params)
        (ua, sa), (ub, sb) = step(grads, states, params, kwargs)
        assert_trees_close(ua, ub, rtol, atol, what=f"updates at step {i}")
        history.append(ua)
        params = tuple(jax.tree.map(lambda p, u: (p + u).astype(p.dtype), p, u)
                       for p, u in zip(params, (ua, ub)))
        states = (sa, sb)
    assert_trees_close(params[0], params[1], rtol, atol, what="final params")
    assert_trees_close(states[0], states[1], rtol, atol, what="final state")
    return history, states[0]
