"""scale_by_rms, scale_by_stddev, scale_by_rss and scale_by_adadelta against optax 0.2.8."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from support import assert_same_state_class, compare, compare_bf16, compare_complex


RMS_CONFIGS = [
    {},
    dict(decay=0.95, eps=1e-6, initial_scale=0.5, eps_in_sqrt=False, bias_correction=True),
    dict(decay=0.8, eps=1e-4, eps_in_sqrt=True, bias_correction=True),
]


@pytest.mark.parametrize("kwargs", RMS_CONFIGS)
def test_scale_by_rms_matches_optax(kwargs):
    ours, theirs = gradx.scale_by_rms(**kwargs), optax.scale_by_rms(**kwargs)
    compare(ours, theirs)
    expected = "ScaleByRmsWithCountState" if kwargs.get("bias_correction") else "ScaleByRmsState"
    assert_same_state_class(ours, theirs, expected)


# Bias-corrected with initial_scale 0, the first step's variance is 0 (round-off; see
# test_centered_variance_is_clamped_at_zero): here an initial_scale keeps it away from 0.
STDDEV_CONFIGS = RMS_CONFIGS[:2] + [dict(RMS_CONFIGS[2], initial_scale=0.1)]


@pytest.mark.parametrize("kwargs", STDDEV_CONFIGS)
def test_scale_by_stddev_matches_optax(kwargs):
    ours, theirs = gradx.scale_by_stddev(**kwargs), optax.scale_by_stddev(**kwargs)
    compare(ours, theirs)
    expected = ("ScaleByRStdDevWithCountState" if kwargs.get("bias_correction")
                else "ScaleByRStdDevState")
    assert_same_state_class(ours, theirs, expected)


@pytest.mark.parametrize("decay", [0.5, 0.8, 0.99])
def test_centered_variance_is_clamped_at_zero(decay):
    """At the first bias-corrected step ``ν̂ - |μ̂|²`` is 0 in exact arithmetic and its computed
    value round-off; below 0 it gives NaN: Optax's ``scale_by_stddev`` (and ``rmsprop(...,
    centered=True, bias_correction=True)``) returns NaN for 43 of these 64 gradients with decay
    0.8 and 61 with 0.99, unclamped gradx's for 2 of them with 0.5 (found by make fuzz). gradx
    clamps the variance at 0: finite updates of at most the exact ``|g|/√eps``, and Optax's
    numbers from the second step on, where the variance is no longer 0 (the gradient flips
    sign and grows: far from 0)."""
    first = np.random.default_rng(0).normal(size=64)
    grads = [jnp.asarray(first * (-1.5) ** t, jnp.float32) for t in range(4)]
    runs = {}
    for lib in (gradx, optax):
        tx = lib.scale_by_stddev(decay=decay, eps=1e-8, bias_correction=True)
        update, state, runs[lib] = jax.jit(tx.update), tx.init(grads[0]), []
        for g in grads:
            u, state = update(g, state)
            runs[lib].append(np.asarray(u))
    ratio = runs[gradx][0] * np.sqrt(1e-8) / np.asarray(grads[0])
    assert np.all(np.isfinite(ratio)) and np.all(ratio > 0) and np.all(ratio <= 1 + 1e-6)
    optax_nans = int(np.isnan(runs[optax][0]).sum())
    assert optax_nans == {0.5: 0, 0.8: 43, 0.99: 61}[decay]
    for ours, theirs in zip(runs[gradx][1:], runs[optax][1:]):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5)


def test_scale_by_rms_equals_adam_without_first_moment():
    ours = gradx.scale_by_rms(decay=0.99, eps_in_sqrt=False, bias_correction=True)
    compare(ours, optax.scale_by_adam(b1=0.0, b2=0.99), compare_state=False)


def test_scale_by_rms_first_step_closed_form():
    g = {"w": jnp.array([3.0, -4.0, 0.0])}
    tx = gradx.scale_by_rms(decay=0.9, eps=0.0, initial_scale=0.0)
    u, state = jax.jit(tx.update)(g, tx.init(g))
    # ν = 0.1·g², u = g/√ν = sign(g)/√0.1 (0/0 is nan only where g = 0 and eps = 0)
    np.testing.assert_allclose(np.asarray(u["w"])[:2], [1 / np.sqrt(0.1), -1 / np.sqrt(0.1)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.nu["w"]), [0.9, 1.6, 0.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["scale_by_rms", "scale_by_stddev"])
def test_rms_complex_matches_optax(name):
    compare_complex(getattr(gradx, name)(), getattr(optax, name)())


@pytest.mark.parametrize("kwargs", [{}, dict(initial_accumulator_value=0.0, eps=1e-5)])
def test_scale_by_rss_matches_optax(kwargs):
    ours, theirs = gradx.scale_by_rss(**kwargs), optax.scale_by_rss(**kwargs)
    compare(ours, theirs)
    assert_same_state_class(ours, theirs, "ScaleByRssState")


def test_scale_by_rss_zero_accumulator_gives_zero_update():
    tx = gradx.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
    g = {"w": jnp.array([0.0, 2.0])}
    u, state = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u["w"]), [0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(state.sum_of_squares["w"]), [0.0, 4.0])


@pytest.mark.parametrize("kwargs", [{}, dict(rho=0.5, eps=1e-4)])
def test_scale_by_adadelta_matches_optax(kwargs):
    ours, theirs = gradx.scale_by_adadelta(**kwargs), optax.scale_by_adadelta(**kwargs)
    compare(ours, theirs)
    assert_same_state_class(ours, theirs, "ScaleByAdaDeltaState")


@pytest.mark.parametrize("name, kwargs", [
    ("scale_by_rms", dict(bias_correction=True)),
    ("scale_by_stddev", {}),
    ("scale_by_rss", {}),
    ("scale_by_adadelta", {}),
])
def test_bf16_params_keep_bf16(name, kwargs):
    compare_bf16(getattr(gradx, name)(**kwargs), getattr(optax, name)(**kwargs))


@pytest.mark.parametrize("factory, kwargs, message", [
    (gradx.scale_by_rms, dict(decay=1.5), r"decay must be in \[0.0, 1.0\], got decay=1.5"),
    (gradx.scale_by_rms, dict(decay=-0.1), r"decay must be in \[0.0, 1.0\], got decay=-0.1"),
    (gradx.scale_by_rms, dict(decay=1.0, bias_correction=True),
     r"decay must be in \[0.0, 1.0\), got decay=1.0"),
    (gradx.scale_by_rms, dict(eps=-1e-8), r"eps must be >= 0, got eps=-1e-08"),
    (gradx.scale_by_rms, dict(initial_scale=-1.0), r"initial_scale must be >= 0, got initial_scale=-1.0"),
    (gradx.scale_by_stddev, dict(decay=2.0), r"decay must be in \[0.0, 1.0\], got decay=2.0"),
    (gradx.scale_by_stddev, dict(eps=-1.0), r"eps must be >= 0, got eps=-1.0"),
    (gradx.scale_by_rss, dict(initial_accumulator_value=-0.1),
     r"initial_accumulator_value must be >= 0, got initial_accumulator_value=-0.1"),
    (gradx.scale_by_rss, dict(eps=-1e-7), r"eps must be >= 0, got eps=-1e-07"),
    (gradx.scale_by_adadelta, dict(rho=1.1), r"rho must be in \[0.0, 1.0\], got rho=1.1"),
    (gradx.scale_by_adadelta, dict(eps=0.0), r"eps must be > 0, got eps=0.0"),
])
def test_invalid_hyperparameters_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_boundary_values_optax_accepts_are_accepted():
    params = {"w": jnp.array([0.5, -2.0, 0.0])}
    for tx in (gradx.scale_by_rms(decay=1.0, initial_scale=1.0), gradx.scale_by_rms(decay=0.0),
               gradx.scale_by_stddev(decay=1.0, initial_scale=1.0), gradx.scale_by_rss(eps=0.0),
               gradx.scale_by_adadelta(rho=0.0), gradx.scale_by_adadelta(rho=1.0)):
        u, _ = tx.update({"w": jnp.array([1.0, -3.0, 0.5])}, tx.init(params))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
