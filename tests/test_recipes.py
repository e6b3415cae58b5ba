"""Named recipes: each one's numbers against an explicit Optax chain (or a hand-worked formula)
over several jitted steps, its documented defaults, its schedule at the documented points, and
its validation errors."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
import gradx.recipes as recipes
from gradx.hyperparams import InjectStatefulHyperparamsState, WrappedScheduleState
from support import compare, make_grads, make_params, run

# make_params(): dense/kernel (5, 3), dense/bias (3,), scale (), conv (2, 3, 3, 4), head (3, 2)
MATRICES = {"dense": {"kernel": True, "bias": False}, "scale": False, "conv": True, "head": True}


def lr_at(tx, params, count, name="learning_rate"):
    """The hyperparameter ``name`` that the update at step ``count`` (from 0) uses."""
    is_injected = lambda node: isinstance(node, InjectStatefulHyperparamsState)  # noqa: E731
    state = jax.tree.map(
        lambda node: node._replace(hyperparams_states={
            k: WrappedScheduleState(jnp.asarray(count, jnp.int32)) for k in node.hyperparams_states})
        if is_injected(node) else node, tx.init(params), is_leaf=is_injected)
    zeros = jax.tree.map(jnp.zeros_like, params)
    _, state = jax.jit(tx.update)(zeros, state, params)
    return float(gradx.read_state(state)[name])


# --- transformer pretraining ---------------------------------------------------------------

def test_pretraining_equals_optax_clip_adamw_warmup_cosine():
    tx = recipes.transformer_pretraining(total_steps=8, peak_learning_rate=0.05, warmup_steps=2)
    oracle = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw, static_args="mask")(
            optax.warmup_cosine_decay_schedule(0.0, 0.05, 2, 8, end_value=0.005),
            b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=MATRICES))
    compare(tx, oracle, n_steps=8)


def test_pretraining_documented_schedule_points():
    params = make_params()
    tx = recipes.transformer_pretraining(total_steps=10_000)
    assert lr_at(tx, params, 0) == 0.0
    np.testing.assert_allclose(lr_at(tx, params, 1000), 1.5e-4, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 2000), 3e-4, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 6000), 3e-4 * 0.55, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 10_000), 3e-5, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 50_000), 3e-5, rtol=1e-6)


# --- transformer fine-tuning ---------------------------------------------------------------

def transformer():
    """Embeddings, three blocks (attention kernel/bias, LayerNorm scale/bias), a final norm
    and a classification head."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    params = {"embed": {"embedding": normal(6, 4)}, "final_norm": {"scale": normal(4)},
              "head": {"kernel": normal(4, 2), "bias": normal(2)}}
    for i in range(3):
        params[f"layers_{i}"] = {"attn": {"kernel": normal(4, 4), "bias": normal(4)},
                                 "ln_1": {"scale": normal(4), "bias": normal(4)}}
    return params


def block(label, decay=True):
    return {"attn": {"kernel": (label, decay), "bias": (label, False)},
            "ln_1": {"scale": (label, False), "bias": (label, False)}}


# (group, decayed) per leaf: embeddings layer 0, layers_k layer k + 1, final norm and head on top.
FINETUNE = {"embed": {"embedding": ("L0", True)}, "final_norm": {"scale": ("L4", False)},
            "head": {"kernel": ("head", True), "bias": ("head", False)},
            "layers_0": block("L1"), "layers_1": block("L2"), "layers_2": block("L3")}
IS_PAIR = lambda x: isinstance(x, tuple)  # noqa: E731
LABELS = jax.tree.map(lambda pair: pair[0], FINETUNE, is_leaf=IS_PAIR)
DECAY_MASK = jax.tree.map(lambda pair: pair[1], FINETUNE, is_leaf=IS_PAIR)


def test_finetuning_equals_torch_style_groups_one_lr_per_layer():
    """Layer-wise decay and the head multiplier equal one AdamW per layer, each at its own rate
    (PyTorch parameter groups), after global clipping."""
    total, lr, decay = 10, 1e-2, 0.8
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, 2),
                                     optax.linear_schedule(lr, 0.0, 8)], [2])
    factors = {f"L{k}": decay ** (4 - k) for k in range(5)}
    factors["head"] = 10.0
    # Injected hyperparameters are float32 arrays on both sides: b2 = 0.999 rounded to float32
    # moves the bias correction 1 - b2^t of the first steps by ~1e-5 relative.
    adamw = optax.inject_hyperparams(optax.adamw, static_args="mask")
    oracle = optax.chain(optax.clip_by_global_norm(1.0), optax.partition(
        {group: adamw(lambda c, f=f: f * schedule(c), b1=0.9, b2=0.999, eps=1e-6,
                      weight_decay=0.01, mask=DECAY_MASK)
         for group, f in factors.items()}, LABELS))
    tx = recipes.transformer_finetuning(total, lr, warmup_fraction=0.2, layer_decay=decay)
    compare(tx, oracle, params=transformer(), n_steps=total + 1, compare_state=False)


def test_finetuning_without_layer_decay_equals_optax_partition_with_state():
    schedule = optax.join_schedules([optax.linear_schedule(0.0, 2e-5, 1),
                                     optax.linear_schedule(2e-5, 0.0, 9)], [1])
    group = lambda sched: optax.inject_hyperparams(optax.adamw, static_args="mask")(  # noqa: E731
        sched, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=DECAY_MASK)
    labels = jax.tree.map(lambda label: "head" if label == "head" else "body", LABELS)
    oracle = optax.chain(optax.clip_by_global_norm(1.0), optax.partition(
        {"body": group(schedule), "head": group(lambda c: 10.0 * schedule(c))}, labels))
    compare(recipes.transformer_finetuning(10), oracle, params=transformer(), n_steps=6)


def test_finetuning_groups_readable_and_head_patterns():
    params = transformer()
    tx = recipes.transformer_finetuning(1000)
    assert lr_at(tx, params, 0, "body/learning_rate") == 0.0
    np.testing.assert_allclose(lr_at(tx, params, 60, "body/learning_rate"), 2e-5, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 60, "head/learning_rate"), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 530, "body/learning_rate"), 1e-5, rtol=1e-5)
    assert lr_at(tx, params, 1000, "body/learning_rate") == 0.0
    # The default head pattern: head, classifier, qa_outputs as a path component.
    assert [bool(recipes.HEAD.search(p)) for p in
            ["head/kernel", "bert/classifier/bias", "qa_outputs/kernel", "heads/kernel",
             "layers_0/attn/header"]] == [True, True, True, False, False]
    # head=None: every leaf in 'body', the 'head' group is empty.
    grads = make_grads(params, 0)
    plain = recipes.transformer_finetuning(10, 1e-3, head=None, clip_norm=None)
    updates, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    one = recipes.transformer_finetuning(10, 1e-3, head="nothing", clip_norm=None)
    expected, _ = jax.jit(one.update)(grads, one.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)


# --- vision --------------------------------------------------------------------------------

def optax_sgd_l2(learning_rate, momentum, nesterov, weight_decay):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def test_vision_cosine_equals_optax_l2_nesterov_sgd():
    oracle = optax.inject_hyperparams(optax_sgd_l2)(
        optax.cosine_decay_schedule(0.1, 8), momentum=0.9, nesterov=True, weight_decay=5e-4)
    compare(recipes.vision_sgd(8), oracle, n_steps=9)


def test_vision_step_with_warmup_equals_optax():
    # total 12, warmup 2: the steps at 0.3, 0.6, 0.8 of the remaining 10 steps.
    schedule = optax.join_schedules([
        optax.linear_schedule(0.0, 0.1, 2),
        optax.piecewise_constant_schedule(0.1, {3: 0.2, 6: 0.2, 8: 0.2})], [2])
    oracle = optax.inject_hyperparams(optax_sgd_l2)(schedule, momentum=0.9, nesterov=True,
                                                    weight_decay=5e-4)
    compare(recipes.vision_sgd(12, schedule="step", warmup_steps=2), oracle, n_steps=12)


def test_vision_documented_schedule_points():
    params = make_params()
    cosine, step = recipes.vision_sgd(1000), recipes.vision_sgd(1000, schedule="step")
    np.testing.assert_allclose(lr_at(cosine, params, 0), 0.1, rtol=1e-6)
    np.testing.assert_allclose(lr_at(cosine, params, 500), 0.05, rtol=1e-6)
    assert lr_at(cosine, params, 1000) == 0.0
    for count, lr in [(299, 0.1), (300, 0.02), (600, 0.004), (800, 0.0008)]:
        np.testing.assert_allclose(lr_at(step, params, count), lr, rtol=1e-6)


# --- memory-lean ---------------------------------------------------------------------------

def test_adafactor_equals_optax_with_the_papers_relative_step():
    relative_step = lambda count: jnp.minimum(1e-2, 1.0 / jnp.sqrt(count))  # noqa: E731
    oracle = optax.inject_hyperparams(
        optax.adafactor, static_args=("min_dim_size_to_factor", "decay_offset", "dtype_momentum"))(
        relative_step, min_dim_size_to_factor=2, decay_rate=0.8, clipping_threshold=1.0,
        multiply_by_parameter_scale=True, momentum=None)
    ours, state = compare(recipes.memory_lean_adafactor(min_dim_size_to_factor=2), oracle)
    # factored: a row and a column vector for the 5x3 kernel, no first moment anywhere
    factored = state.inner_state[0]
    assert {factored.v_row["dense"]["kernel"].shape,
            factored.v_col["dense"]["kernel"].shape} == {(5,), (3,)}
    assert not hasattr(factored, "mu")
    params = make_params()
    tx = recipes.memory_lean_adafactor()
    np.testing.assert_allclose(lr_at(tx, params, 9_999), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 40_000), 1 / 200, rtol=1e-6)


def test_lion_is_adamw_settings_translated():
    tx = recipes.memory_lean_lion(total_steps=8, adamw_learning_rate=0.05, warmup_steps=2)
    oracle = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.lion, static_args="mask")(
            optax.warmup_cosine_decay_schedule(0.0, 0.005, 2, 8, end_value=0.0005),
            b1=0.9, b2=0.99, weight_decay=1.0, mask=MATRICES))
    compare(tx, oracle, n_steps=8)
    params = make_params()
    tx = recipes.memory_lean_lion(total_steps=10_000)
    np.testing.assert_allclose(lr_at(tx, params, 2000), 3e-5, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 2000, "weight_decay"), 1.0, rtol=1e-6)
    tx = recipes.memory_lean_lion(total_steps=10_000, lr_ratio=3.0)
    np.testing.assert_allclose(lr_at(tx, params, 2000), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(lr_at(tx, params, 2000, "weight_decay"), 0.3, rtol=1e-6)


# --- reinforcement learning ----------------------------------------------------------------

def test_rl_adam_equals_optax_with_linear_annealing():
    oracle = optax.chain(optax.clip_by_global_norm(0.5), optax.inject_hyperparams(optax.adam)(
        optax.linear_schedule(1e-2, 0.0, 5), eps=1e-5))
    compare(recipes.rl_adam(1e-2, anneal_steps=5), oracle, n_steps=7)
    oracle = optax.chain(optax.clip_by_global_norm(0.5),
                         optax.inject_hyperparams(optax.adam)(3e-4, eps=1e-5))
    compare(recipes.rl_adam(), oracle)


def test_rl_rmsprop_is_dqns_centered_rmsprop():
    """Against DeepMind's NeuralQLearner.lua update, worked in float64:
    g ← .95g + .05dw, g2 ← .95g2 + .05dw², Δ = -lr·dw/√(g2 - g² + 0.01)."""
    params = make_params()
    history, _, _ = run(recipes.rl_rmsprop(), params, n_steps=5)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    g = jax.tree.map(np.zeros_like, p)
    g2 = jax.tree.map(np.zeros_like, p)
    for step, updates in enumerate(history):
        dw = jax.tree.map(lambda x: np.asarray(x, np.float64),
                          make_grads(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p), step))
        g = jax.tree.map(lambda a, d: 0.95 * a + 0.05 * d, g, dw)
        g2 = jax.tree.map(lambda a, d: 0.95 * a + 0.05 * d * d, g2, dw)
        delta = jax.tree.map(lambda d, a, b: -2.5e-4 * d / np.sqrt(b - a * a + 0.01), dw, g, g2)
        jax.tree.map(lambda u, d: np.testing.assert_allclose(u, d, rtol=2e-5, atol=1e-9),
                     updates, delta)
        p = jax.tree.map(lambda x, d: x + d, p, delta)
    oracle = optax.inject_hyperparams(optax.rmsprop)(2.5e-4, decay=0.95, eps=0.01, centered=True)
    compare(recipes.rl_rmsprop(), oracle)


# --- documented defaults and validation ----------------------------------------------------

DEFAULTS = {
    recipes.transformer_pretraining: dict(
        peak_learning_rate=3e-4, warmup_steps=2000, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
        min_lr_ratio=0.1, clip_norm=1.0),
    recipes.transformer_finetuning: dict(
        learning_rate=2e-5, warmup_fraction=0.06, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
        clip_norm=1.0, head_lr_multiplier=10.0, layer_decay=None),
    recipes.vision_sgd: dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                             schedule="cosine", milestones=(0.3, 0.6, 0.8), gamma=0.2,
                             warmup_steps=0),
    recipes.memory_lean_adafactor: dict(learning_rate=None, decay_rate=0.8,
                                        clipping_threshold=1.0, multiply_by_parameter_scale=True,
                                        min_dim_size_to_factor=128, weight_decay_rate=None),
    recipes.memory_lean_lion: dict(adamw_learning_rate=3e-4, warmup_steps=2000,
                                   adamw_weight_decay=0.1, lr_ratio=10.0, b1=0.9, b2=0.99,
                                   min_lr_ratio=0.1, clip_norm=1.0),
    recipes.rl_adam: dict(learning_rate=3e-4, eps=1e-5, clip_norm=0.5, anneal_steps=None),
    recipes.rl_rmsprop: dict(learning_rate=2.5e-4, decay=0.95, eps=0.01, centered=True,
                             clip_norm=None),
}


def number(value):
    """How a default is written in the docstrings: ``3e-4``, ``0.1``, ``2000``, ``'cosine'``."""
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if isinstance(value, float) and value == int(value) and value >= 10:
        return str(int(value))
    return repr(value)


@pytest.mark.parametrize("recipe", list(DEFAULTS), ids=lambda r: r.__name__)
def test_documented_defaults(recipe):
    signature = inspect.signature(recipe)
    documented = DEFAULTS[recipe]
    assert {name: signature.parameters[name].default for name in documented} == documented
    docstring = " ".join(recipe.__doc__.split())
    defaults = docstring[docstring.index("Defaults:"):docstring.index("Source")]
    for name, value in documented.items():
        if value is not None:
            assert f"``{name}={number(value)}``" in defaults, (name, number(value))
    assert recipe.__name__ in recipes.__all__


def test_defaults_reach_the_state():
    params = make_params()
    hyper = {k: float(v) for k, v in gradx.read_state(
        recipes.transformer_pretraining(100, warmup_steps=10).init(params)).items()}
    np.testing.assert_allclose([hyper["b1"], hyper["b2"], hyper["eps"], hyper["weight_decay"]],
                               [0.9, 0.95, 1e-8, 0.1], rtol=1e-6)
    hyper = gradx.read_state(recipes.vision_sgd(100).init(params))
    np.testing.assert_allclose([hyper["momentum"], hyper["weight_decay"]], [0.9, 5e-4], rtol=1e-6)
    hyper = gradx.read_state(recipes.rl_adam().init(params))
    np.testing.assert_allclose([hyper["learning_rate"], hyper["eps"]], [3e-4, 1e-5], rtol=1e-6)


@pytest.mark.parametrize("build, message", [
    (lambda: recipes.transformer_pretraining(100, 0.0),
     "peak_learning_rate must be > 0, got peak_learning_rate=0.0."),
    (lambda: recipes.transformer_pretraining(100, min_lr_ratio=1.5),
     "min_lr_ratio must be in [0.0, 1.0], got min_lr_ratio=1.5."),
    (lambda: recipes.transformer_pretraining(100, warmup_steps=-1),
     "warmup_steps must be >= 0, got warmup_steps=-1."),
    (lambda: recipes.transformer_pretraining(100, warmup_steps=10, clip_norm=0.0),
     "clip_norm must be > 0, got clip_norm=0.0."),
    (lambda: recipes.transformer_finetuning(100, -1e-5),
     "learning_rate must be > 0, got learning_rate=-1e-05."),
    (lambda: recipes.transformer_finetuning(100, warmup_fraction=1.0),
     "warmup_fraction must be in [0.0, 1.0), got warmup_fraction=1.0."),
    (lambda: recipes.transformer_finetuning(100, head_lr_multiplier=0.0),
     "head_lr_multiplier must be > 0, got head_lr_multiplier=0.0."),
    (lambda: recipes.transformer_finetuning(100, layer_decay=1.2),
     "decay must be in (0.0, 1.0], got decay=1.2."),
    (lambda: recipes.vision_sgd(100, 0.0), "learning_rate must be > 0, got learning_rate=0.0."),
    (lambda: recipes.vision_sgd(100, schedule="linear"),
     "schedule must be one of ('cosine', 'step'), got schedule='linear'."),
    (lambda: recipes.vision_sgd(100, schedule="step", gamma=0.0),
     "gamma must be > 0, got gamma=0.0."),
    (lambda: recipes.vision_sgd(100, schedule="step", milestones=(0.5, 1.0)),
     "milestones must be in (0.0, 1.0), got milestones=1.0."),
    (lambda: recipes.vision_sgd(100, warmup_steps=-5),
     "warmup_steps must be >= 0, got warmup_steps=-5."),
    (lambda: recipes.memory_lean_lion(100, 0.0, warmup_steps=10),
     "adamw_learning_rate must be > 0, got adamw_learning_rate=0.0."),
    (lambda: recipes.memory_lean_lion(100, warmup_steps=10, lr_ratio=0.5),
     "lr_ratio must be in [1.0, inf), got lr_ratio=0.5."),
    (lambda: recipes.rl_adam(0.0), "learning_rate must be > 0, got learning_rate=0.0."),
    (lambda: recipes.rl_rmsprop(-1.0), "learning_rate must be > 0, got learning_rate=-1.0."),
])
def test_validation(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
