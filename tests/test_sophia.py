"""Sophia (``gradx.curvature``): Sophia-H against ``optax.contrib.sophia`` 0.2.8 over jitted
steps with three refreshes (float32, and bf16 params with float32 momentum), Sophia-G against
the authors' ``sophia_opt.SophiaG`` 0.2.2 stepped by their training loop (float64 both sides,
the sampled labels drawn as the estimator draws them), the estimator running on refresh steps
only, one trace for refresh and other steps, a checkpoint round trip, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sophia_opt
import torch
import torch.nn.functional as F

import gradx
from support import assert_same_state_class, assert_trees_close, make_grads, make_params

K = 3        # update_interval: refreshes before steps 0, 3, 6 (Optax's schedule)
N_STEPS = 9


def _key():
    """The estimators' key: an RBG key compiles in a fraction of the default threefry's time."""
    return jax.random.key(0, impl="rbg")


def _hp(make_estimator, **overrides):
    return {"learning_rate": 0.1, "weight_decay": 0.1, "gamma": 0.05, "update_interval": K,
            "hessian_diagonal_fn": make_estimator(_key()), **overrides}


def _params(dtype=jnp.float32):
    """Two leaves: each leaf's random signs cost a PRNG kernel, slow to compile on CPU."""
    params = make_params(dtype)
    return {"kernel": params["dense"]["kernel"], "bias": params["dense"]["bias"]}


def _loss(params, step):
    """A loss whose Hessian changes with the params and the step, with off-diagonal terms (so
    Hutchinson's estimate depends on the random signs)."""
    return sum((1.0 + step) * jnp.sum(p) ** 2 + 0.3 * jnp.sum(p ** 4)
               for p in jax.tree.leaves(params))


def _stepper(tx):
    """One jitted update with the loss of the step passed as ``obj_fn``; counts its traces."""
    traces = []

    @jax.jit
    def step(grads, state, params, i):
        traces.append(1)
        return tx.update(grads, state, params, obj_fn=lambda p: _loss(p, i))

    return step, traces


def _run(step, state, params, steps, move=True):
    """Updates (and params, if ``move``) over ``steps``, from ``state``."""
    history = []
    for i in steps:
        updates, state = step(make_grads(params, i), state, params, jnp.float32(i))
        history.append(updates)
        if move:
            params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return history, params, state


@pytest.fixture(scope="module")
def sophia_h_runs():
    params = _params()
    tx = gradx.sophia(**_hp(gradx.hutchinson_estimator_diag_hessian))
    oracle = optax.contrib.sophia(**_hp(optax.contrib.hutchinson_estimator_diag_hessian))
    ours, traces = _stepper(tx)
    theirs, _ = _stepper(oracle)
    return {"ours": _run(ours, tx.init(params), params, range(N_STEPS)), "step": ours,
            "theirs": _run(theirs, oracle.init(params), params, range(N_STEPS)),
            "traces": traces, "tx": tx, "params": params}


def test_sophia_h_matches_optax_over_three_refreshes(sophia_h_runs):
    (ours, our_params, our_state), (theirs, their_params, their_state) = (
        sophia_h_runs["ours"], sophia_h_runs["theirs"])
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, b, what=f"updates at step {i}")
    assert_trees_close(our_params, their_params, what="final params")
    assert_trees_close(our_state, their_state, what="final state")
    nu = jax.tree.leaves(our_state[0].nu)
    assert all(np.any(np.asarray(x) != 0) for x in nu)  # the estimates reached every leaf
    assert type(our_state[0].hessian_fn_state).__name__ == "HutchinsonState"
    assert_same_state_class(gradx.scale_by_sophia(update_interval=K),
                            optax.contrib._sophia.scale_by_sophia(update_interval=K), "SophiaState")
    default_key = gradx.hutchinson_estimator_diag_hessian().init(None)
    assert_trees_close(default_key, optax.contrib.hutchinson_estimator_diag_hessian().init(None),
                       rtol=0, atol=0, what="default key")


def test_one_trace_serves_refresh_and_other_steps(sophia_h_runs):
    assert len(sophia_h_runs["traces"]) == 1


def test_state_round_trips_through_a_checkpoint_mid_interval(sophia_h_runs, tmp_path):
    """Save after step 4 (between refreshes), restore, resume: the same numbers as without."""
    step, tx, params = sophia_h_runs["step"], sophia_h_runs["tx"], sophia_h_runs["params"]
    _, mid_params, mid_state = _run(step, tx.init(params), params, range(5))
    gradx.checkpoint.save(tmp_path / "ckpt", mid_params, mid_state, step=5)
    restored = gradx.checkpoint.restore(tmp_path / "ckpt", mid_params, tx.init(params))
    assert restored.step == 5
    assert_trees_close(restored.opt_state, mid_state, rtol=0, atol=0, what="restored state")
    resumed, final_params, final_state = _run(step, restored.opt_state, restored.params,
                                              range(5, N_STEPS))
    ours, our_params, our_state = sophia_h_runs["ours"]
    assert_trees_close(resumed, ours[5:], rtol=0, atol=0, what="resumed updates")
    assert_trees_close(final_state, our_state, rtol=0, atol=0, what="resumed state")


def test_sophia_h_bf16_params_with_float32_momentum_matches_optax():
    """bf16 params and Hessian EMA (the params' dtype, as Optax), float32 momentum: same state
    as Optax to float32 precision; updates are Optax's float32 updates rounded to bf16 (gradx
    keeps the gradients' dtype), twice (the rule's output, then ×(-η)): within (1 + 2⁻⁸)² - 1
    relative, 2⁻⁸ being bf16's unit roundoff. No weight decay, whose bf16 subtraction would
    cancel."""
    params = _params(jnp.bfloat16)
    tx = gradx.sophia(**_hp(gradx.hutchinson_estimator_diag_hessian, weight_decay=0.0,
                            mu_dtype=jnp.float32))
    oracle = optax.contrib.sophia(**_hp(optax.contrib.hutchinson_estimator_diag_hessian,
                                        weight_decay=0.0, mu_dtype=jnp.float32))
    (ours, _), (theirs, _) = _stepper(tx), _stepper(oracle)
    a, _, a_state = _run(ours, tx.init(params), params, range(7), move=False)
    b, _, b_state = _run(theirs, oracle.init(params), params, range(7), move=False)
    assert {x.dtype for x in jax.tree.leaves(a_state[0].mu)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(a_state[0].nu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(a[-1])} == {jnp.dtype(jnp.bfloat16)}
    assert_trees_close(a_state, b_state, what="bf16 state")
    for i, (x, y) in enumerate(zip(a, b)):
        assert_trees_close(x, y, rtol=(1 + 2 ** -8) ** 2 - 1, atol=0, what=f"bf16 updates at step {i}")


def _counting_estimator(calls):
    """Returns ĥ = 2 everywhere and records each run (a host callback: only executed runs)."""

    def update(updates, state, params=None, **extra_args):
        jax.debug.callback(lambda: calls.append(1))
        return jax.tree.map(lambda p: jnp.full_like(p, 2.0), params), state

    return gradx.GradientTransformationExtraArgs(lambda params: gradx.EmptyState(), update)


@pytest.mark.parametrize("make, refreshed_before", [
    (lambda est: gradx.sophia(0.1, b2=0.5, update_interval=K, hessian_diagonal_fn=est),
     [0, 3, 6]),
    (lambda est: gradx.sophia_g(0.1, b2=0.5, update_interval=K, hessian_diagonal_fn=est),
     [3, 6]),
], ids=["sophia", "sophia_g"])
def test_estimator_runs_on_refresh_steps_only(make, refreshed_before):
    """Optax's schedule refreshes on steps 0, k, 2k, ...; the authors' loop on k, 2k, ... The
    EMA (b2 = 0.5 of ĥ = 2) after r refreshes is 2·(1 - 0.5^r)."""
    calls = []
    tx = make(_counting_estimator(calls))
    params = {"w": jnp.ones(3)}
    update = jax.jit(tx.update)
    state = tx.init(params)
    for i in range(8):
        _, state = update({"w": jnp.ones(3)}, state, params)
        jax.effects_barrier()
        refreshes = sum(r <= i for r in refreshed_before)
        assert len(calls) == refreshes, f"step {i}"
        np.testing.assert_allclose(state[0].nu["w"], 2 * (1 - 0.5 ** refreshes), rtol=1e-6)


def test_sophia_g_matches_the_authors_sophiag_and_training_loop():
    """Softmax regression, float64 on both sides, 8 steps, k = 3. The authors' loop: after step
    i with i % k == k - 1, the loss on labels sampled from the logits at the new params and the
    next batch, backward, ``update_hessian()``. The torch side draws the labels as gradx's
    estimator does (``jax.random.categorical`` with keys split from the estimator's) and computes
    ĝ with torch's autograd."""
    n, d, v, batch = 8, 4, 5, 6
    lr, b1, b2, rho, wd, bs = 0.05, 0.965, 0.99, 0.04, 0.1, 5120
    rng = np.random.default_rng(0)
    w0, c0 = rng.normal(size=(d, v)), 0.1 * rng.normal(size=v)
    xs, ys = rng.normal(size=(n, batch, d)), rng.integers(0, v, (n, batch))

    with jax.enable_x64(True):
        def logits(p, x):
            return x @ p["w"] + p["b"]

        def loss(p, x, y):
            log_probs = jax.nn.log_softmax(logits(p, x))
            return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=-1))

        tx = gradx.sophia_g(lr, b1, b2, rho, wd, bs=bs, update_interval=K,
                            hessian_diagonal_fn=gradx.gauss_newton_bartlett_estimator(_key()))

        @jax.jit
        def step(p, state, x, y):
            updates, state = tx.update(jax.grad(loss)(p, x, y), state, p,
                                       logits_fn=lambda q: logits(q, x))
            return gradx.apply_updates(p, updates), state

        params = {"w": jnp.asarray(w0), "b": jnp.asarray(c0)}
        state = tx.init(params)
        ours = []
        for i in range(n):
            params, state = step(params, state, xs[i], ys[i])
            ours.append(params)

        w, c = torch.tensor(w0, requires_grad=True), torch.tensor(c0, requires_grad=True)
        opt = sophia_opt.SophiaG([w, c], lr=lr, betas=(b1, b2), rho=rho, weight_decay=wd)
        key = _key()
        for i in range(n):
            F.cross_entropy(torch.tensor(xs[i]) @ w + c, torch.tensor(ys[i])).backward()
            opt.step(bs=bs)
            opt.zero_grad()
            assert_trees_close(ours[i], {"w": w.detach().numpy(), "b": c.detach().numpy()},
                               rtol=1e-12, atol=1e-14, what=f"params after step {i}")
            if i % K == K - 1:
                sampled_logits = torch.tensor(xs[i + 1]) @ w + c
                key, sample_key = jax.random.split(key)
                labels = jax.random.categorical(sample_key,
                                                jnp.asarray(sampled_logits.detach().numpy()))
                F.cross_entropy(sampled_logits, torch.tensor(np.asarray(labels))).backward()
                opt.update_hessian()
                opt.zero_grad()
        hessian, exp_avg = opt.state[w]["hessian"].numpy(), opt.state[w]["exp_avg"].numpy()
        np.testing.assert_allclose(state[0].nu["w"], hessian, rtol=1e-12)
        # Both regimes were exercised: some elements clipped, some not.
        unclipped = np.abs(exp_avg) < rho * bs * hessian
        assert unclipped.any() and not unclipped.all()


def test_missing_loss_or_logits_function_says_what_to_pass():
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.ones(2)}
    tx = gradx.sophia(0.1)
    with pytest.raises(ValueError, match=r"obj_fn=lambda params: loss\(params, batch\)"):
        tx.update(grads, tx.init(params), params)
    tx = gradx.sophia_g()
    with pytest.raises(ValueError, match=r"logits_fn=lambda params: model\(params, inputs\)"):
        tx.update(grads, tx.init(params), params)
    with pytest.raises(ValueError, match="not passing `params`"):
        tx.update(grads, tx.init(params), logits_fn=lambda p: p["w"])


@pytest.mark.parametrize("make, name", [
    (lambda: gradx.sophia(0.1, b1=1.0), "b1"),
    (lambda: gradx.sophia(0.1, b2=-0.1), "b2"),
    (lambda: gradx.sophia(0.1, eps=-1.0), "eps"),
    (lambda: gradx.sophia(0.1, gamma=-0.01), "gamma"),
    (lambda: gradx.sophia(0.1, clip_threshold=0.0), "clip_threshold"),
    (lambda: gradx.sophia(0.1, update_interval=0), "update_interval"),
    (lambda: gradx.scale_by_sophia(update_interval=2.5), "update_interval"),
    (lambda: gradx.sophia(0.1, verbose=True, print_win_rate_every_n_steps=-1),
     "print_win_rate_every_n_steps"),
    (lambda: gradx.sophia(0.1, verbose=True, print_win_rate_every_n_steps=1.5),
     "print_win_rate_every_n_steps"),
    (lambda: gradx.sophia_g(rho=-0.04), "rho"),
    (lambda: gradx.sophia_g(bs=0), "bs"),
    (lambda: gradx.sophia_g(weight_decay=-0.1), "weight_decay"),
])
def test_impossible_hyperparameters_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=rf"{name} must be .*got {name}="):
        make()


def _printed_win_rates(tx, capfd):
    """Four jitted steps at fixed params on ``L = Σ a·p²``: with ``b1 = b2 = 0`` the momentum is
    ``g`` and, from step 1 on, ``h = diag(H) = 2a`` (Hutchinson is exact on a diagonal Hessian),
    so ``u = g/(γ·h) = p/γ``: unclipped where ``|p| < γ``."""
    params = {"w": jnp.array([0.5, -2.0, 3.0, 0.01])}
    loss = lambda p: jnp.sum(jnp.array([1.0, 2.0, 3.0, 4.0]) * p["w"] ** 2)  # noqa: E731
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=loss))
    state = tx.init(params)
    for _ in range(4):
        _, state = update(jax.grad(loss)(params), state, params)
    jax.effects_barrier()
    return capfd.readouterr().out.splitlines()


def test_win_rate_is_printed_as_optax_prints_it_and_never_with_0(capfd):
    """Optax's line every 2 steps (steps 2 and 4: |p| < γ = 1 for 2 of the 4 elements). With the
    default 0 nothing, as Optax documents ("0 to turn off"), where Optax prints every step."""
    hp = {"learning_rate": 0.1, "b1": 0.0, "b2": 0.0, "gamma": 1.0, "update_interval": 1,
          "verbose": True,
          "hessian_diagonal_fn": gradx.hutchinson_estimator_diag_hessian(_key())}
    printed = _printed_win_rates(gradx.sophia(**hp, print_win_rate_every_n_steps=2), capfd)
    assert printed == ["Sophia optimizer win rate: 0.5"] * 2
    assert _printed_win_rates(gradx.sophia(**hp), capfd) == []
