"""The Adam family against optax 0.2.8: updates and state over several jitted steps on the
multi-leaf tree, bf16 / complex64 / mu_dtype handling, the exported moment helpers, and
construction-time validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import (assert_trees_close, compare, complex_grads, complex_params, make_grads,
                     make_params, run)

CASES = [
    ("scale_by_adam", {}, 6),
    ("scale_by_adam", {"nesterov": True, "eps_root": 1e-8}, 6),
    ("scale_by_adam", {"mu_dtype": jnp.bfloat16}, 6),
    ("scale_by_amsgrad", {}, 6),
    ("scale_by_amsgrad", {"bias_correction_mu": False, "bias_correction_nu": False,
                          "mu_dtype": jnp.bfloat16}, 6),
    ("scale_by_adamax", {"b2": 0.99}, 6),
    ("scale_by_adan", {"eps_root": 1e-8}, 6),
    ("scale_by_belief", {}, 6),
    ("scale_by_belief", {"nesterov": True}, 6),
    ("scale_by_radam", {}, 8),  # rho_t crosses the default threshold 5 at t = 6
    ("scale_by_radam", {"threshold": 3.0, "nesterov": True}, 6),
    ("scale_by_yogi", {}, 6),
    ("scale_by_novograd", {"weight_decay": 0.1}, 6),
    ("scale_by_novograd", {"mu_dtype": jnp.bfloat16, "b2": 0.5}, 6),
]


@pytest.mark.parametrize("name,kwargs,n_steps", CASES,
                         ids=[f"{n}-{'-'.join(k) or 'defaults'}" for n, k, _ in CASES])
def test_matches_optax(name, kwargs, n_steps):
    compare(getattr(gradx, name)(**kwargs), getattr(optax, name)(**kwargs), n_steps=n_steps)


def test_radam_run_covers_both_branches():
    b2, rho_inf = 0.999, 2 / (1 - 0.999) - 1
    rho = [rho_inf - 2 * t * b2 ** t / (1 - b2 ** t) for t in range(1, 9)]
    assert rho[0] < 5.0 and rho[-1] >= 5.0


def test_state_classes_have_optax_fields():
    for name in ("ScaleByAdamState", "ScaleByAmsgradState", "ScaleByAdanState",
                 "ScaleByBeliefState", "ScaleByNovogradState"):
        assert getattr(gradx, name)._fields == getattr(optax, name)._fields, name
    state = gradx.scale_by_adan().init(make_params())
    assert isinstance(state, gradx.ScaleByAdanState) and state.t.dtype == jnp.int32
    assert isinstance(gradx.scale_by_adam().init(make_params()), gradx.ScaleByAdamState)


BF16_BLOCKS = ["scale_by_adam", "scale_by_amsgrad", "scale_by_adamax", "scale_by_adan",
               "scale_by_belief", "scale_by_radam", "scale_by_yogi", "scale_by_novograd"]


def test_bf16_params_keep_bf16_updates_and_state():
    params = make_params(jnp.bfloat16)
    for name in BF16_BLOCKS:
        ours, _, state = run(getattr(gradx, name)(), params, n_steps=3)
        theirs, _, their_state = run(getattr(optax, name)(), params, n_steps=3)
        for u in jax.tree.leaves(ours):
            assert u.dtype == jnp.bfloat16, name
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (jnp.bfloat16, jnp.int32), name
        # Same bf16 arithmetic as Optax: bit-identical.
        assert_trees_close(ours, theirs, rtol=0, atol=0, what=name)
        assert_trees_close(state, their_state, rtol=0, atol=0, what=name)


def test_bf16_params_with_f32_mu_dtype():
    """mu is stored in float32; the update is Optax's (float32) update rounded to the
    gradients' dtype (Optax returns it in float32)."""
    params = make_params(jnp.bfloat16)
    grads = make_grads(params, 0)
    ours = gradx.scale_by_adam(mu_dtype=jnp.float32)
    theirs = optax.scale_by_adam(mu_dtype=jnp.float32)
    u, state = jax.jit(ours.update)(grads, ours.init(params))
    v, their_state = jax.jit(theirs.update)(grads, theirs.init(params))
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.mu))
    assert all(n.dtype == jnp.bfloat16 for n in jax.tree.leaves(state.nu))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
    assert_trees_close(u, jax.tree.map(lambda x: x.astype(jnp.bfloat16), v), rtol=0, atol=0)
    assert_trees_close(state, their_state, rtol=0, atol=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_complex64_matches_optax(nesterov):
    params = complex_params()
    ours, our_params, our_state = run(gradx.scale_by_adam(nesterov=nesterov), params,
                                      grads_fn=complex_grads)
    theirs, their_params, their_state = run(optax.scale_by_adam(nesterov=nesterov), params,
                                            grads_fn=complex_grads)
    assert all(u.dtype == jnp.complex64 for u in jax.tree.leaves(ours))
    assert np.abs(np.asarray(ours[-1]["head"]).imag).max() > 0
    assert_trees_close(ours, theirs)
    assert_trees_close(our_params, their_params)
    assert_trees_close(our_state, their_state)


def test_nesterov_changes_the_update():
    params = make_params()
    plain, _, _ = run(gradx.scale_by_adam(), params, n_steps=2)
    nadam, _, _ = run(gradx.scale_by_adam(nesterov=True), params, n_steps=2)
    assert not np.allclose(plain[1]["head"], nadam[1]["head"], rtol=1e-3)


def test_novograd_needs_params_and_keeps_one_scalar_per_leaf():
    tx = gradx.scale_by_novograd()
    params = make_params()
    state = tx.init(params)
    assert all(jnp.shape(n) == () for n in jax.tree.leaves(state.nu))
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="state.nu does not match updates"):
        tx.update(params, state._replace(nu={"a": jnp.zeros([])}), params)


def test_moment_helpers_match_optax_under_jit():
    params = make_params()
    g, m = make_grads(params, 0), make_grads(params, 1)
    cg = {"a": jnp.array([1 + 2j, -0.5j], jnp.complex64), "b": None}
    cm = {"a": jnp.array([0.3, 0.1], jnp.complex64), "b": None}
    cases = [
        ("update_moment", (g, m, 0.9, 1)),
        ("update_moment", (g, m, 0.9, 3)),
        ("update_moment_per_elem_norm", (g, m, 0.99, 2)),
        ("update_moment_per_elem_norm", (cg, cm, 0.99, 2)),
        ("update_moment_per_elem_norm", (cg, cm, 0.99, 3)),
        ("update_infinity_moment", (g, m, 0.999, 1e-3)),
        ("update_moment", (cg, cm, 0.9, 1)),
    ]
    for name, args in cases:
        ours = jax.jit(getattr(gradx, name), static_argnums=(2, 3))(*args)
        theirs = getattr(optax, name)(*args)
        assert jax.tree.structure(ours) == jax.tree.structure(theirs), name
        assert_trees_close(ours, theirs, what=name)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), m)
    for count in (1, 3, 1000):
        ours = jax.jit(gradx.bias_correction)(bf16, 0.999, jnp.int32(count))
        theirs = optax.bias_correction(bf16, 0.999, jnp.int32(count))
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(ours))
        assert_trees_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("factory,kwargs,match", [
    (gradx.scale_by_adam, {"b1": 1.0}, r"b1 must be in \[0.0, 1.0\), got b1=1.0"),
    (gradx.scale_by_adam, {"b2": -0.1}, r"b2 must be in \[0.0, 1.0\), got b2=-0.1"),
    (gradx.scale_by_adam, {"eps": -1e-8}, r"eps must be >= 0, got eps=-1e-08"),
    (gradx.scale_by_adam, {"eps_root": -1.0}, r"eps_root must be >= 0, got eps_root=-1.0"),
    (gradx.scale_by_amsgrad, {"b2": 1.0}, r"b2 must be in \[0.0, 1.0\), got b2=1.0"),
    (gradx.scale_by_adamax, {"b1": 1.5}, r"b1 must be in \[0.0, 1.0\), got b1=1.5"),
    (gradx.scale_by_adamax, {"b2": 1.5}, r"b2 must be in \[0.0, 1.0\], got b2=1.5"),
    (gradx.scale_by_adan, {"b3": 1.0}, r"b3 must be in \[0.0, 1.0\), got b3=1.0"),
    (gradx.scale_by_belief, {"eps": -1.0}, r"eps must be >= 0, got eps=-1.0"),
    (gradx.scale_by_radam, {"b2": 1.0}, r"b2 must be in \[0.0, 1.0\), got b2=1.0"),
    (gradx.scale_by_yogi, {"initial_accumulator_value": -1.0},
     r"initial_accumulator_value must be >= 0, got initial_accumulator_value=-1.0"),
    (gradx.scale_by_novograd, {"b1": 1.0}, r"b1 must be in \[0.0, 1.0\), got b1=1.0"),
    (gradx.scale_by_novograd, {"b2": 1.1}, r"b2 must be in \[0.0, 1.0\], got b2=1.1"),
])
def test_validation_errors(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_allowed_edge_values_construct():
    gradx.scale_by_adam(b1=0.0)
    gradx.scale_by_adamax(b2=1.0)
    gradx.scale_by_novograd(b2=1.0)
    gradx.scale_by_adam(b1=jnp.float32(0.9))  # arrays are accepted like numbers
