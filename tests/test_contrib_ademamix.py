"""AdEMAMix and Simplified AdEMAMix against optax 0.2.8 and pytorch_optimizer 4.1.0's AdEMAMix
(the authors' formulas, warm-ups included), and the second moment kept out of ``mu_dtype``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pytorch_optimizer import AdEMAMix

import gradx
from contrib_support import compare_with_torch
from support import assert_trees_close, compare, compare_bf16, make_grads, make_params, run


def test_ademamix_matches_optax_and_pytorch_optimizer():
    ours = gradx.contrib.ademamix(0.05, weight_decay=0.1)
    compare(ours, optax.contrib.ademamix(0.05, weight_decay=0.1), n_steps=5)
    compare_with_torch(ours, lambda p: AdEMAMix(p, lr=0.05, weight_decay=0.1,
                                                weight_decouple=True))


def test_scale_by_ademamix_with_schedules_matches_optax():
    kwargs = {"b3": lambda c: 0.9 + 0.01 * c, "alpha": lambda c: 1.0 + c, "eps_root": 1e-8}
    compare(gradx.contrib.scale_by_ademamix(**kwargs), optax.contrib.scale_by_ademamix(**kwargs),
            n_steps=5)


def test_bf16():
    compare_bf16(gradx.contrib.ademamix(0.05), optax.contrib.ademamix(0.05))


def test_mu_dtype_is_kept_and_nu_stays_in_the_params_dtype():
    """Optax casts m1, m2 and nu to mu_dtype at init only: its first update promotes them all
    to float32 (the state changes dtype). Here m1 and m2 stay bfloat16 and nu float32, equal to
    Optax's float32 nu."""
    params = {"w": make_params()["dense"]["kernel"]}
    fixed = lambda _, step: make_grads(params, step)  # noqa: E731
    _, _, ours = run(gradx.contrib.scale_by_ademamix(mu_dtype=jnp.bfloat16), params, n_steps=3,
                     grads_fn=fixed)
    _, _, f32 = run(optax.contrib.scale_by_ademamix(), params, n_steps=3, grads_fn=fixed)
    assert ours.m1["w"].dtype == ours.m2["w"].dtype == jnp.bfloat16
    assert ours.nu["w"].dtype == jnp.float32
    assert_trees_close(ours.nu, f32.nu, rtol=1e-6, what="nu")
    assert_trees_close(ours.m1, f32.m1, rtol=1e-2, atol=1e-2, what="m1 (bfloat16)")
    theirs = optax.contrib.scale_by_ademamix(mu_dtype=jnp.bfloat16)
    state = theirs.init(params)
    assert state.m1["w"].dtype == jnp.bfloat16
    _, state = theirs.update(fixed(None, 0), state)
    assert state.m1["w"].dtype == state.nu["w"].dtype == jnp.float32


def test_warmups_match_pytorch_optimizer_t_alpha_beta3():
    """The authors' alpha and b3 warm-ups (1-based step) over 6 steps of an 4-step warm-up, in
    float64 on both sides (b3_t in float32 would round 1 - b3_t by 1e-3 relative)."""
    with jax.enable_x64(True):
        tx = gradx.contrib.ademamix(0.05, b3=0.999, alpha=2.0, alpha_warmup=4, b3_warmup=4)
        compare_with_torch(tx, lambda p: AdEMAMix(p, lr=0.05, betas=(0.9, 0.999, 0.999),
                                                  alpha=2.0, t_alpha_beta3=4),
                           n_steps=6, dtype=jnp.float64, rtol=1e-10, atol=1e-12)


def test_warmup_schedules_by_hand():
    """b3's half-life grows linearly from b1's: at the middle of the warm-up it is the mean."""
    tx = gradx.contrib.scale_by_ademamix(b1=0.5, b2=0.5, b3=0.75, alpha=3.0, alpha_warmup=2,
                                         b3_warmup=2)
    params = {"w": jnp.ones(())}
    u, state = jax.jit(tx.update)({"w": jnp.ones(())}, tx.init(params))
    half_life = 0.5 * (1.0 + np.log(0.5) / np.log(0.75))  # b1 = 0.5 has half-life 1
    b3 = 0.5 ** (1 / half_life)
    np.testing.assert_allclose(state.m2["w"], 1 - b3, rtol=1e-6)
    np.testing.assert_allclose(u["w"], (1 + 1.5 * (1 - b3)) / (1 + 1e-8), rtol=1e-6)


def test_simplified_ademamix_matches_optax():
    compare_bf16(gradx.contrib.simplified_ademamix(0.05, alpha=2.0, weight_decay=0.1),
                 optax.contrib.simplified_ademamix(0.05, alpha=2.0, weight_decay=0.1))


def test_scale_by_simplified_ademamix_by_hand():
    """m is a sum: after g = 1, 1 (b1 = 0.5), m = 1.5; n̂ = 1; u = (m + α·g)/(1 + eps)."""
    tx = gradx.contrib.scale_by_simplified_ademamix(b1=0.5, b2=0.5, alpha=lambda c: 2.0 * c)
    update = jax.jit(tx.update)
    _, state = update(jnp.ones(2), tx.init(jnp.zeros(2)))
    u, state = update(jnp.ones(2), state)
    np.testing.assert_allclose(u, (1.5 + 2.0) / (1 + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(state.m, 1.5)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b3"):
        gradx.contrib.ademamix(0.1, b3=1.0)
    with pytest.raises(ValueError, match="alpha"):
        gradx.contrib.scale_by_ademamix(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha_warmup"):
        gradx.contrib.ademamix(0.1, alpha_warmup=0)
    with pytest.raises(ValueError, match="b3_warmup=10"):
        gradx.contrib.ademamix(0.1, b3=lambda c: 0.99, b3_warmup=10)
    with pytest.raises(ValueError, match="b2"):
        gradx.contrib.simplified_ademamix(0.1, b2=-0.5)
