"""Schedules: optax's fourteen against optax 0.2.8, float64 under x64, the new schedules against
hand-computed values, and validation errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx import schedules
from support import ATOL, RTOL, compare

SGDR = [dict(init_value=0.1, peak_value=1.0, warmup_steps=5, decay_steps=30),
        dict(init_value=0.0, peak_value=0.5, warmup_steps=3, decay_steps=40, exponent=2.0)]

# (id, name, kwargs, boundaries worth probing on both sides)
CASES = [
    ("constant", "constant_schedule", dict(value=0.3), ()),
    ("polynomial", "polynomial_schedule",
     dict(init_value=1.0, end_value=0.01, power=2, transition_steps=100, transition_begin=5),
     (5, 105)),
    ("polynomial_zero_steps", "polynomial_schedule",
     dict(init_value=0.7, end_value=0.01, power=2, transition_steps=0), ()),
    ("linear_negative_begin", "linear_schedule",
     dict(init_value=1.0, end_value=0.0, transition_steps=100, transition_begin=-3), (100,)),
    ("linear_up", "linear_schedule",
     dict(init_value=0.0, end_value=0.9, transition_steps=40, transition_begin=3), (3, 43)),
    ("piecewise_constant", "piecewise_constant_schedule",
     dict(init_value=1.0, boundaries_and_scales={10: 0.5, 40: 0.1, 70: 2.0}), (10, 40, 70)),
    ("piecewise_constant_none", "piecewise_constant_schedule", dict(init_value=0.4), ()),
    ("exponential", "exponential_decay",
     dict(init_value=1.0, transition_steps=7, decay_rate=0.9, transition_begin=5), (5,)),
    ("exponential_staircase_end", "exponential_decay",
     dict(init_value=1.0, transition_steps=7, decay_rate=0.8, staircase=True, end_value=0.3),
     (7, 14, 35)),
    ("exponential_growth_end", "exponential_decay",
     dict(init_value=0.1, transition_steps=10, decay_rate=1.5, end_value=0.9), ()),
    ("exponential_zero_rate", "exponential_decay",
     dict(init_value=0.5, transition_steps=10, decay_rate=0.0), ()),
    ("cosine_decay", "cosine_decay_schedule",
     dict(init_value=1.0, decay_steps=90, alpha=0.1), (90,)),
    ("cosine_decay_exponent", "cosine_decay_schedule",
     dict(init_value=0.8, decay_steps=100, exponent=2), (100,)),
    ("interpolate_cosine", "piecewise_interpolate_schedule",
     dict(interpolate_type="cosine", init_value=1.0,
          boundaries_and_scales={0: 2.0, 10: 0.5, 40: 0.1}), (10, 40)),
    ("interpolate_linear", "piecewise_interpolate_schedule",
     dict(interpolate_type="linear", init_value=0.5,
          boundaries_and_scales={20: 0.1, 60: 1.5, 61: 0.5}), (20, 60, 61)),
    ("interpolate_empty", "piecewise_interpolate_schedule",
     dict(interpolate_type="linear", init_value=0.5, boundaries_and_scales={}), ()),
    ("linear_onecycle", "linear_onecycle_schedule", dict(transition_steps=100, peak_value=1.0),
     (30, 85, 100)),
    ("linear_onecycle_short", "linear_onecycle_schedule",
     dict(transition_steps=3, peak_value=0.9, pct_start=0.2), (3,)),
    ("cosine_onecycle", "cosine_onecycle_schedule",
     dict(transition_steps=100, peak_value=1.0, div_factor=10.0), (30, 100)),
    ("warmup_constant", "warmup_constant_schedule",
     dict(init_value=0.0, peak_value=1.0, warmup_steps=10), (10,)),
    ("warmup_cosine", "warmup_cosine_decay_schedule",
     dict(init_value=0.1, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.01),
     (10, 100)),
    ("warmup_cosine_zero_peak", "warmup_cosine_decay_schedule",
     dict(init_value=0.2, peak_value=0.0, warmup_steps=50, decay_steps=100, end_value=-0.3,
          exponent=2), (50, 100)),
    ("warmup_exponential", "warmup_exponential_decay_schedule",
     dict(init_value=0.1, peak_value=1.0, warmup_steps=10, transition_steps=5, decay_rate=0.8,
          transition_begin=4, staircase=True, end_value=0.2), (10, 14)),
    ("sgdr", "sgdr_schedule", dict(cosine_kwargs=SGDR), (5, 30, 33, 70)),
]
IDS = [case[0] for case in CASES]
OPTAX_NAMES = {
    "constant_schedule", "polynomial_schedule", "linear_schedule", "piecewise_constant_schedule",
    "exponential_decay", "cosine_decay_schedule", "piecewise_interpolate_schedule",
    "linear_onecycle_schedule", "cosine_onecycle_schedule", "warmup_constant_schedule",
    "warmup_cosine_decay_schedule", "warmup_exponential_decay_schedule", "sgdr_schedule",
    "join_schedules",
}


def _steps(boundaries):
    around = [b + d for b in boundaries for d in (-1, 0, 1)]
    return np.unique(np.clip(np.r_[np.arange(0, 130), around, 1000, 12345], 0, None)
                     ).astype(np.int32)


def test_every_optax_schedule_is_exported():
    assert OPTAX_NAMES <= set(schedules.__all__)
    assert {case[1] for case in CASES} | {"join_schedules"} == OPTAX_NAMES
    for name in schedules.__all__:
        assert getattr(gradx, name) is getattr(schedules, name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_optax_under_jit_and_vmap(case):
    _, name, kwargs, boundaries = case
    ours, theirs = getattr(gradx, name)(**kwargs), getattr(optax, name)(**kwargs)
    steps = _steps(boundaries)
    got = jax.jit(jax.vmap(ours))(jnp.asarray(steps))
    assert got.shape == steps.shape and got.dtype == jnp.float32
    expected = np.asarray(jax.jit(jax.vmap(theirs))(jnp.asarray(steps)), np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=RTOL, atol=ATOL)
    # Eagerly, with Python ints and int32 scalars, and on an array of counts.
    for step in (0, 7, int(steps[-1])):
        np.testing.assert_allclose(float(ours(step)), float(theirs(step)), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(float(ours(jnp.int32(step))), float(theirs(step)),
                                   rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(steps))), got, rtol=RTOL, atol=ATOL)


def test_join_schedules_matches_optax():
    pieces = lambda lib: [lib.constant_schedule(0.5), lib.linear_schedule(1.0, 0.2, 10),
                          lib.cosine_decay_schedule(0.3, 20)]
    ours = gradx.join_schedules(pieces(gradx), [5, 25])
    theirs = optax.join_schedules(pieces(optax), [5, 25])
    steps = _steps((5, 25, 45))
    np.testing.assert_allclose(jax.jit(jax.vmap(ours))(steps),
                               [theirs(int(s)) for s in steps], rtol=RTOL, atol=ATOL)
    # Later pieces see the count relative to their boundary.
    assert float(ours(25)) == pytest.approx(0.3) and float(ours(5)) == pytest.approx(1.0)


def test_schedule_in_an_optimizer_matches_optax():
    ours = gradx.scale_by_schedule(gradx.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6))
    theirs = optax.scale_by_schedule(optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6))
    compare(ours, theirs, n_steps=7)


def test_x64_computes_in_float64():
    """Under x64 every schedule returns float64 for an int32 count, equal to optax evaluated on
    float64 counts (which keeps optax in float64 throughout); optax's own result for the int32
    count is float32 for several schedules."""
    build = lambda lib: [getattr(lib, name)(**kwargs) for _, name, kwargs, _ in CASES]
    stacked = lambda fns: jax.jit(lambda s: jnp.stack([jax.vmap(f)(s) for f in fns]))
    steps = _steps(sorted({b for case in CASES for b in case[3]}))
    with jax.enable_x64(True):
        ours = build(gradx)
        got = stacked(ours)(jnp.asarray(steps, jnp.int32))
        reference = stacked(build(optax))(jnp.asarray(steps, jnp.float64))
        assert got.dtype == jnp.float64 and reference.dtype == jnp.float64
        for i, id_ in enumerate(IDS):
            np.testing.assert_allclose(got[i], reference[i], rtol=1e-12, atol=1e-15, err_msg=id_)
            assert jnp.asarray(ours[i](7)).dtype == jnp.float64, id_  # constants: a Python float
        # A float32 count keeps its dtype.
        assert gradx.sgdr_schedule(SGDR)(jnp.float32(3.0)).dtype == jnp.float32
        # The optax defect being fixed: float32 out of the int32 optimizer count.
        ours = gradx.linear_schedule(1.0, 0.0, 10)(jnp.int32(3))
        theirs = optax.linear_schedule(1.0, 0.0, 10)(jnp.int32(3))
        assert theirs.dtype == jnp.float32 and ours.dtype == jnp.float64
        assert float(ours) == 0.7 and abs(float(theirs) - 0.7) > 1e-9
        ours = gradx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)(jnp.int32(40))
        assert ours.dtype == jnp.float64
        assert float(ours) == pytest.approx(0.5 * (1 + np.cos(np.pi * 30 / 90)), rel=1e-15)


def test_no_cancellation_at_the_end_of_a_cosine_decay():
    """float32: 1 + cos(pi·k/T) loses digits near k = T; gradx evaluates sin(pi(T-k)/2T)²."""
    steps = np.arange(990, 1000)
    exact = np.sin(0.5 * np.pi * (1000 - steps) / 1000) ** 2
    ours = np.asarray(jax.jit(jax.vmap(gradx.cosine_decay_schedule(1.0, 1000)))(steps), np.float64)
    theirs = np.asarray(jax.vmap(optax.cosine_decay_schedule(1.0, 1000))(steps), np.float64)
    np.testing.assert_allclose(ours, exact, rtol=1e-6)
    assert np.max(np.abs(theirs / exact - 1)) > 1e-3


def test_giant_int_steps():
    schedule = jax.jit(gradx.cosine_decay_schedule(1000.0, int(1e10)))
    np.testing.assert_allclose(schedule(int(1e9)), 975.52826, rtol=1e-6)
    np.testing.assert_allclose(gradx.linear_schedule(1.0, 0.0, 4 * 10**10)(10**10), 0.75)


def test_vmap_over_a_hyperparameter():
    values = jax.vmap(lambda peak: gradx.warmup_linear_decay_schedule(0.0, peak, 2, 6)(3))(
        jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(values, [0.75, 1.5], rtol=1e-6)


# ---------------------------------------------------------------- new schedules, hand-computed

def _table(schedule, n):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n)), np.float64)


def test_wsd_linear_hand_computed():
    schedule = gradx.warmup_stable_decay_schedule(1.0, warmup_steps=4, stable_steps=6,
                                                  decay_steps=5, init_value=0.1)
    expected = [0.1, 0.325, 0.55, 0.775, 1, 1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2, 0, 0, 0]
    np.testing.assert_allclose(_table(schedule, 18), expected, rtol=1e-6, atol=1e-7)
    assert gradx.wsd_schedule is gradx.warmup_stable_decay_schedule


@pytest.mark.parametrize("shape,factor", [
    ("cosine", [1.0, 0.9045084971874737, 0.6545084971874737, 0.3454915028125263,
                0.0954915028125263]),
    ("sqrt", [1.0, 0.5527864045000421, 0.3675444679663241, 0.2254033307585166,
              0.1055728090000841]),
])
def test_wsd_shapes_hand_computed(shape, factor):
    schedule = gradx.wsd_schedule(2.0, 3, 2, 5, end_value=0.5, decay_shape=shape)
    # f(x) for x = 0, .2, .4, .6, .8: (1 + cos πx)/2 and 1 - √x, written out.
    expected = [0.0, 2 / 3, 4 / 3, 2.0, 2.0] + [0.5 + 1.5 * f for f in factor] + [0.5, 0.5]
    np.testing.assert_allclose(_table(schedule, 12), expected, rtol=1e-6)


def test_wsd_zero_length_phases():
    schedule = gradx.wsd_schedule(1.0, 0, 3, 0, end_value=0.25)
    np.testing.assert_allclose(_table(schedule, 5), [1, 1, 1, 0.25, 0.25])


def test_warmup_linear_decay_is_bert_schedule():
    schedule = gradx.warmup_linear_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6)
    np.testing.assert_allclose(_table(schedule, 8), [0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0],
                               atol=1e-7)
    # Hugging Face get_linear_schedule_with_warmup(num_warmup_steps=W, num_training_steps=T).
    w, t = 10, 100
    hf = [c / w if c < w else max(0.0, (t - c) / (t - w)) for c in range(120)]
    ours = _table(gradx.warmup_linear_decay_schedule(0.0, 3e-5, w, t), 120)
    np.testing.assert_allclose(ours, 3e-5 * np.array(hf), rtol=1e-6, atol=1e-12)


def test_inverse_sqrt_hand_computed():
    schedule = gradx.inverse_sqrt_schedule(1.0, warmup_steps=4)
    got = _table(schedule, 101)
    np.testing.assert_allclose(got[[0, 1, 2, 3, 4, 9, 16, 25, 100]],
                               [0, 0.25, 0.5, 0.75, 1, 2 / 3, 0.5, 0.4, 0.2], rtol=1e-6)
    schedule = gradx.inverse_sqrt_schedule(0.5, warmup_steps=0, timescale=10.0)
    np.testing.assert_allclose(_table(schedule, 91)[[0, 30, 90]], [0.5, 0.25, 0.5 / np.sqrt(10)],
                               rtol=1e-6)


def test_warmup_combinator():
    np.testing.assert_allclose(_table(gradx.warmup(gradx.constant_schedule(2.0), 4), 7),
                               [0, 0.5, 1, 1.5, 2, 2, 2])
    np.testing.assert_allclose(
        _table(gradx.warmup(gradx.linear_schedule(1.0, 0.0, 4), 2, init_value=0.5), 8),
        [0.5, 0.75, 1, 0.75, 0.5, 0.25, 0, 0], atol=1e-7)
    # warmup(cosine_decay) is optax's warmup_cosine_decay_schedule.
    ours = gradx.warmup(gradx.cosine_decay_schedule(1.0, 90, alpha=0.01), 10, init_value=0.1)
    theirs = optax.warmup_cosine_decay_schedule(0.1, 1.0, 10, 100, end_value=0.01)
    np.testing.assert_allclose(_table(ours, 120), jax.vmap(theirs)(jnp.arange(120)),
                               rtol=RTOL, atol=ATOL)
    assert gradx.warmup(gradx.constant_schedule(1.0), 0)(0) == 1.0


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("build,match", [
    (lambda lib: lib.cosine_decay_schedule(1.0, 0), r"decay_steps must be > 0, got decay_steps=0"),
    (lambda lib: lib.piecewise_constant_schedule(1.0, {5: -0.5}),
     r"boundaries_and_scales must have non-negative scales, got boundaries_and_scales=\{5: -0.5\}"),
    (lambda lib: lib.piecewise_interpolate_schedule("linear", 1.0, {5: -3}),
     r"non-negative scales, got boundaries_and_scales=\{5: -3\}"),
    (lambda lib: lib.piecewise_interpolate_schedule("linar", 1.0),
     r"interpolate_type must be one of \('linear', 'cosine'\), got interpolate_type='linar'"),
    (lambda lib: lib.linear_onecycle_schedule(0, 1.0),
     r"transition_steps must be > 0, got transition_steps=0"),
    (lambda lib: lib.cosine_onecycle_schedule(-2, 1.0),
     r"transition_steps must be > 0, got transition_steps=-2"),
    (lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10),
     r"decay_steps must be > warmup_steps .*got decay_steps=10, warmup_steps=10"),
    (lambda lib: lib.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5,
                                         decay_steps=3)]),
     r"got decay_steps=3, warmup_steps=5"),
])
def test_validation_where_optax_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build(gradx)
    with pytest.raises(ValueError):
        build(optax)


@pytest.mark.parametrize("build,match", [
    (lambda: gradx.join_schedules([gradx.constant_schedule(1.0)] * 2, [1, 2]),
     r"one boundary fewer than schedules, got 2 schedules and boundaries=\[1, 2\]"),
    (lambda: gradx.sgdr_schedule([]), r"at least one cycle, got cosine_kwargs=\[\]"),
    (lambda: gradx.wsd_schedule(1.0, -1, 5, 5), r"warmup_steps must be >= 0, got warmup_steps=-1"),
    (lambda: gradx.wsd_schedule(1.0, 1, -5, 5), r"stable_steps must be >= 0, got stable_steps=-5"),
    (lambda: gradx.wsd_schedule(1.0, 1, 5, -2), r"decay_steps must be >= 0, got decay_steps=-2"),
    (lambda: gradx.wsd_schedule(-0.1, 1, 5, 5), r"peak_value must be >= 0, got peak_value=-0.1"),
    (lambda: gradx.wsd_schedule(1.0, 1, 5, 5, decay_shape="exp"),
     r"decay_shape must be one of \('linear', 'cosine', 'sqrt'\), got decay_shape='exp'"),
    (lambda: gradx.warmup_linear_decay_schedule(0.0, 1.0, 5, 5),
     r"decay_steps must be > warmup_steps .*got decay_steps=5, warmup_steps=5"),
    (lambda: gradx.warmup_linear_decay_schedule(0.0, 1.0, -1, 5),
     r"warmup_steps must be >= 0, got warmup_steps=-1"),
    (lambda: gradx.warmup_linear_decay_schedule(0.0, -1.0, 1, 5),
     r"peak_value must be >= 0, got peak_value=-1.0"),
    (lambda: gradx.inverse_sqrt_schedule(-1.0, 5), r"peak_value must be >= 0, got peak_value=-1.0"),
    (lambda: gradx.inverse_sqrt_schedule(1.0, -5), r"warmup_steps must be >= 0, got warmup_steps=-5"),
    (lambda: gradx.inverse_sqrt_schedule(1.0, 0),
     r"timescale must be > 0 \(it defaults to warmup_steps\), got timescale=None, warmup_steps=0"),
    (lambda: gradx.warmup(gradx.constant_schedule(1.0), -3), r"steps must be >= 0, got steps=-3"),
])
def test_validation_of_new_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_warmup_needs_a_callable():
    with pytest.raises(TypeError, match=r"schedule must be a callable of the step count, got 0.1"):
        gradx.warmup(0.1, 5)
