"""Schedule-Free against optax 0.2.8 and the authors' schedulefree 1.4.1 (AdamWScheduleFree,
SGDScheduleFree in train mode), and the warm-up fixed to match the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import schedulefree

import gradx
from contrib_support import compare_with_torch
from support import assert_trees_close, compare, compare_bf16, make_params


def test_adamw_matches_optax_and_schedulefree():
    ours = gradx.contrib.schedule_free_adamw(0.05, weight_decay=0.1)
    _, state = compare(ours, optax.contrib.schedule_free_adamw(0.05, weight_decay=0.1), n_steps=5)
    compare_with_torch(ours, lambda p: schedulefree.AdamWScheduleFree(p, lr=0.05,
                                                                      weight_decay=0.1))
    params = make_params()
    eval_params = jax.jit(gradx.contrib.schedule_free_eval_params)(state, params)
    assert_trees_close(eval_params, optax.contrib.schedule_free_eval_params(state, params),
                       what="eval params")


def test_sgd_bf16_matches_optax():
    compare_bf16(gradx.contrib.schedule_free_sgd(0.05, weight_decay=0.1),
                 optax.contrib.schedule_free_sgd(0.05, weight_decay=0.1))


def test_adamw_warmup_matches_schedulefree_and_shifted_optax():
    """The fix: the base optimizer sees the warm-up at the wrapper's 1-based step. Optax's alias
    evaluates it at the base's 0-based count: its first update is 0 (up to rounding)."""
    ours = gradx.contrib.schedule_free_adamw(0.05, warmup_steps=3, weight_decay=0.1)
    compare_with_torch(ours, lambda p: schedulefree.AdamWScheduleFree(
        p, lr=0.05, warmup_steps=3, weight_decay=0.1))
    schedule = optax.warmup_constant_schedule(0.0, 0.05, 3)
    shifted = optax.contrib.schedule_free(
        optax.chain(optax.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
                    optax.add_decayed_weights(0.1),
                    optax.scale_by_learning_rate(lambda count: schedule(count + 1))),
        learning_rate=schedule)
    compare(ours, shifted, n_steps=5)
    gradx_schedule = gradx.warmup_constant_schedule(0.0, 0.05, 3)
    compare(gradx.contrib.schedule_free(
        gradx.chain(gradx.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
                    gradx.add_decayed_weights(0.1),
                    gradx.scale_by_learning_rate(lambda count: gradx_schedule(count + 1))),
        learning_rate=gradx_schedule), shifted, n_steps=5)
    params = jnp.array([1.0, -2.0])
    theirs = optax.contrib.schedule_free_adamw(0.05, warmup_steps=3, weight_decay=0.1)
    first, _ = theirs.update(jnp.array([0.5, 3.0]), theirs.init(params), params)
    np.testing.assert_allclose(first, 0.0, atol=1e-6)


def test_sgd_warmup_matches_schedulefree():
    compare_with_torch(gradx.contrib.schedule_free_sgd(0.05, warmup_steps=3, weight_decay=0.1),
                       lambda p: schedulefree.SGDScheduleFree(p, lr=0.05, warmup_steps=3,
                                                              weight_decay=0.1))


def test_bad_input():
    with pytest.raises(ValueError, match="b1"):
        gradx.contrib.schedule_free(gradx.sgd(0.1), 0.1, b1=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        gradx.contrib.schedule_free_adamw(warmup_steps=0)
    with pytest.raises(ValueError, match="ScheduleFreeState"):
        gradx.contrib.schedule_free_eval_params(gradx.EmptyState(), jnp.ones(2))
