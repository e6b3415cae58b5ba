"""gradx.torch_compat optimizers side by side with torch.optim 2.13 (CPU, float32)."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gradx
import gradx.torch_compat as tc
from support import donated_temporaries
from torch_compat_support import (TorchRun, assert_close, assert_trajectories, make_grads,
                                  make_params, run_gradx)

N_STEPS = 16

# (torch class, gradx function, arguments): every torch argument the issue lists is exercised.
CONFIGS = [
    ("SGD", tc.sgd, dict(lr=0.1)),
    ("SGD", tc.sgd, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    ("SGD", tc.sgd, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05, maximize=True)),
    ("Adam", tc.adam, dict(lr=0.05)),
    ("Adam", tc.adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, amsgrad=True,
                           maximize=True)),
    ("Adam", tc.adam, dict(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True, amsgrad=True)),
    ("AdamW", tc.adamw, dict(lr=0.05)),
    ("AdamW", tc.adamw, dict(lr=0.05, betas=(0.5, 0.9), weight_decay=0.3, amsgrad=True,
                             maximize=True)),
    ("Adamax", tc.adamax, dict(lr=0.05)),
    ("Adamax", tc.adamax, dict(lr=0.05, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1,
                               maximize=True)),
    ("NAdam", tc.nadam, dict(lr=0.05)),
    ("NAdam", tc.nadam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1,
                             momentum_decay=0.05, maximize=True)),
    ("NAdam", tc.nadam, dict(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True)),
    ("RAdam", tc.radam, dict(lr=0.05)),
    ("RAdam", tc.radam, dict(lr=0.05, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.1,
                             maximize=True)),
    ("RAdam", tc.radam, dict(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True)),
    ("RMSprop", tc.rmsprop, dict(lr=0.01)),
    ("RMSprop", tc.rmsprop, dict(lr=0.01, alpha=0.9, eps=1e-4, weight_decay=0.1, momentum=0.5,
                                 centered=True, maximize=True)),
    ("RMSprop", tc.rmsprop, dict(lr=0.01, momentum=0.9)),
    ("Adagrad", tc.adagrad, dict(lr=0.1)),
    ("Adagrad", tc.adagrad, dict(lr=0.1, lr_decay=0.1, weight_decay=0.1,
                                 initial_accumulator_value=0.5, eps=1e-3, maximize=True)),
    ("Adadelta", tc.adadelta, dict()),
    ("Adadelta", tc.adadelta, dict(lr=0.5, rho=0.8, eps=1e-3, weight_decay=0.1, maximize=True)),
    ("Rprop", tc.rprop, dict(lr=0.02)),
    ("Rprop", tc.rprop, dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.08), maximize=True)),
    ("ASGD", tc.asgd, dict(lr=0.05, t0=5)),
    ("ASGD", tc.asgd, dict(lr=0.05, lambd=0.05, alpha=0.5, t0=3, weight_decay=0.1, maximize=True)),
    ("Adafactor", tc.adafactor, dict(lr=0.05)),
    ("Adafactor", tc.adafactor, dict(lr=0.5, beta2_decay=-0.5, eps=(1e-6, 1e-2), d=1.5,
                                     weight_decay=0.1, maximize=True)),
]


def _torch_state(state_dict):
    """torch's per-parameter state without the ``None`` placeholders, as numpy."""
    out = {}
    for i, entry in state_dict["state"].items():
        entry = {k: np.asarray(v) for k, v in entry.items() if v is not None}
        if entry:
            out[i] = entry
    return out


def assert_states_equal(state, params, torch_opt, what=""):
    ours = tc.to_torch_state_dict(state, params, [])["state"]
    theirs = _torch_state(torch_opt.state_dict())
    assert sorted(ours) == sorted(theirs), what
    for i in theirs:
        assert sorted(ours[i]) == sorted(theirs[i]), f"{what} param {i}"
        for field in theirs[i]:
            assert_close(ours[i][field], theirs[i][field], f"{what} param {i} {field}")


@pytest.mark.parametrize("name, fn, kwargs", CONFIGS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_matches_torch(name, fn, kwargs):
    params, grads = make_params(), make_grads(N_STEPS)
    ours, state, _ = run_gradx(fn(**kwargs), params, grads)
    torch_run = TorchRun(name, kwargs, params)
    assert_trajectories(ours, torch_run.run(grads), name)
    assert_states_equal(state, params, torch_run.opt, name)


def test_defaults_match_torch():
    """Every argument of each function exists in torch with the same default."""
    for name, fn, _ in CONFIGS:
        signature = inspect.signature(getattr(torch.optim, name))
        torch_defaults = {k: v.default for k, v in signature.parameters.items()
                          if v.default is not inspect.Parameter.empty}
        for k, v in inspect.signature(fn).parameters.items():
            assert k in torch_defaults, (name, k)
            assert v.default == torch_defaults[k], (name, k, v.default, torch_defaults[k])


def test_lr_and_momentum_schedules_match_torch_schedulers():
    """lr and momentum as schedules equal torch's scheduler-driven runs (OneCycleLR cycles both)."""
    params, grads = make_params(), make_grads(N_STEPS)
    total = N_STEPS
    lr = tc.one_cycle_lr(0.2, total, pct_start=0.25)
    momentum = tc.one_cycle_momentum(total, pct_start=0.25)
    tx = tc.sgd(lr, momentum=momentum, dampening=0.1, weight_decay=0.01)
    ours, _, _ = run_gradx(tx, params, grads)
    torch_run = TorchRun("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
                         params, scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(
                             o, 0.2, total_steps=total, pct_start=0.25))
    assert_trajectories(ours, torch_run.run(grads), "sgd one-cycle")

    tx = tc.adam(lr, betas=(momentum, 0.99), amsgrad=True)
    ours, _, _ = run_gradx(tx, params, grads)
    torch_run = TorchRun("Adam", dict(lr=0.1, betas=(0.9, 0.99), amsgrad=True), params,
                         scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(
                             o, 0.2, total_steps=total, pct_start=0.25))
    assert_trajectories(ours, torch_run.run(grads), "adam one-cycle")

    tx = tc.rmsprop(tc.step_lr(0.01, 4, 0.5), momentum=0.5, centered=True)
    ours, _, _ = run_gradx(tx, params, grads)
    torch_run = TorchRun("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), params,
                         scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.5))
    assert_trajectories(ours, torch_run.run(grads), "rmsprop step_lr")


def test_asgd_averaged_params_match_torch():
    params, grads = make_params(), make_grads(N_STEPS)
    tx = gradx.chain(tc.clip_grad_value(1e3), tc.asgd(lr=0.05, t0=4))
    _, state, _ = run_gradx(tx, params, grads)
    torch_run = TorchRun("ASGD", dict(lr=0.05, t0=4), params)
    torch_run.run(grads)
    average = jax.jit(tc.asgd_averaged_params)(state)
    assert_close(average, torch_run.state_tree("ax"), "ax")
    with pytest.raises(ValueError, match="exactly one asgd state"):
        tc.asgd_averaged_params(tc.sgd().init(params))


def test_params_needed_only_when_read():
    grads = jax.tree.map(jnp.asarray, make_grads(1)[0])
    tx = tc.adam(0.1)
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    assert jax.tree.structure(updates) == jax.tree.structure(grads)
    for tx in (tc.adam(0.1, weight_decay=0.1), tc.asgd(), tc.adafactor()):
        with pytest.raises(ValueError, match="requires the current value of parameters"):
            tx.update(grads, tx.init(grads))


def test_bf16_params_keep_dtypes():
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), make_params())
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.bfloat16), make_grads(1)[0])
    for tx in (tc.adam(0.1, weight_decay=0.1), tc.adafactor()):
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[1:]))


# Bad input: gradx raises ValueError carrying torch's message; torch rejects the same input.
BAD = [
    ("SGD", tc.sgd, dict(lr=-0.1), "Invalid learning rate: lr must be >= 0"),
    ("SGD", tc.sgd, dict(momentum=-0.1), "Invalid momentum value: momentum must be >= 0"),
    ("SGD", tc.sgd, dict(weight_decay=-1.0), "Invalid weight_decay value: weight_decay must be >= 0"),
    ("SGD", tc.sgd, dict(momentum=0.9, dampening=0.1, nesterov=True),
     "Nesterov momentum requires a momentum and zero dampening"),
    ("SGD", tc.sgd, dict(nesterov=True), "Nesterov momentum requires a momentum"),
    ("Adam", tc.adam, dict(eps=-1e-8), r"Invalid epsilon value: eps must be >= 0, got eps=-1e-08"),
    ("Adam", tc.adam, dict(betas=(1.0, 0.999)),
     r"Invalid beta parameter at index 0: betas\[0\] must be in \[0.0, 1.0\)"),
    ("AdamW", tc.adamw, dict(betas=(0.9, -0.1)), r"Invalid beta parameter at index 1"),
    ("Adamax", tc.adamax, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    ("NAdam", tc.nadam, dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
    ("RAdam", tc.radam, dict(lr=-1.0), "Invalid learning rate"),
    ("RMSprop", tc.rmsprop, dict(alpha=-0.5), "Invalid alpha value"),
    ("RMSprop", tc.rmsprop, dict(eps=-1.0), "Invalid epsilon value"),
    ("Adagrad", tc.adagrad, dict(lr_decay=-1.0), "Invalid lr_decay value"),
    ("Adagrad", tc.adagrad, dict(initial_accumulator_value=-1.0),
     "Invalid initial_accumulator_value value"),
    ("Adadelta", tc.adadelta, dict(rho=1.5), r"Invalid rho value: rho must be in \[0.0, 1.0\]"),
    ("Rprop", tc.rprop, dict(etas=(1.2, 0.5)), r"Invalid eta values: etas must satisfy"),
    ("ASGD", tc.asgd, dict(weight_decay=-1.0), "Invalid weight_decay value"),
    ("Adafactor", tc.adafactor, dict(beta2_decay=0.5), "beta2_decay should be <= 0"),
    ("Adafactor", tc.adafactor, dict(d=0.5), "Clipping threshold d should be >= 1"),
    ("Adafactor", tc.adafactor, dict(eps=(-1.0, 1e-3)), "epsilon1 should be >= 0"),
    ("Adafactor", tc.adafactor, dict(lr=-1.0), "Learning rate should be >= 0"),
    ("Adafactor", tc.adafactor, dict(eps=(None, -1.0)), r"epsilon2 should be >= 0: eps\[1\] must be"),
    ("Adafactor", tc.adafactor, dict(weight_decay=-1.0), "weight_decay should be >= 0"),
    ("Adagrad", tc.adagrad, dict(eps=-1.0), "Invalid epsilon value"),
]


@pytest.mark.parametrize("name, fn, kwargs, match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_raises_like_torch(name, fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_radam_rho_is_accurate_in_float32():
    """ρ_t from the series/direct split agrees with float64 to 1e-6 relative for all t."""
    from gradx.torch_compat.optimizers import _radam_rho
    for b2 in (0.999, 0.99, 0.9):
        t = np.arange(1, 5000, dtype=np.float64)
        exact = 2 / (1 - b2) - 1 - 2 * t * b2**t / (1 - b2**t)
        ours = np.asarray(jax.jit(lambda t: _radam_rho(t, b2)[0])(jnp.asarray(t, jnp.float32)))
        np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=1e-6 * math.fabs(exact[0]))


@pytest.mark.parametrize("max_norm, norm_type", [(1.0, 2.0), (1e3, 2.0), (5.0, 1.0), (2.0, 3.0),
                                                 (0.5, float("inf")), (0.5, "inf")])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    grads = make_grads(2)[1]
    tx = tc.clip_grad_norm(max_norm, norm_type)
    ours, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    tensors = [torch.nn.Parameter(torch.zeros(np.shape(g))) for g in jax.tree.leaves(grads)]
    for p, g in zip(tensors, jax.tree.leaves(grads)):
        p.grad = torch.tensor(np.array(g))
    norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type)
    expected = jax.tree.structure(grads).unflatten([p.grad.numpy() for p in tensors])
    assert_close(ours, expected, "clipped")
    assert_close(jax.jit(tc.total_norm, static_argnums=1)(grads, float(norm_type)), norm.numpy(),
                 "total norm")


def test_clip_grad_norm_keeps_torch_epsilon():
    """At ‖g‖ = max_norm torch still scales by max/(‖g‖ + 1e-6) (optax: by exactly 1)."""
    g = {"a": jnp.asarray([3.0, 4.0])}
    tx = tc.clip_grad_norm(5.0)
    clipped, _ = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_allclose(clipped["a"], np.asarray([3.0, 4.0]) * 5.0 / (5.0 + 1e-6), rtol=1e-7)
    assert float(clipped["a"][1]) < 4.0


def test_clip_grad_value_matches_torch():
    grads = make_grads(3)[2]
    tx = tc.clip_grad_value(1.5)
    ours, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    tensors = [torch.nn.Parameter(torch.zeros(np.shape(g))) for g in jax.tree.leaves(grads)]
    for p, g in zip(tensors, jax.tree.leaves(grads)):
        p.grad = torch.tensor(np.array(g))
    torch.nn.utils.clip_grad_value_(tensors, 1.5)
    assert_close(ours, jax.tree.structure(grads).unflatten([p.grad.numpy() for p in tensors]))


def test_clipping_bad_input():
    with pytest.raises(ValueError, match="Invalid norm_type value: norm_type must be > 0 or inf"):
        tc.clip_grad_norm(1.0, norm_type=0.0)
    with pytest.raises(ValueError, match="Invalid max_norm value: max_norm must be >= 0"):
        tc.clip_grad_norm(-1.0)
    with pytest.raises(ValueError, match="Invalid clip_value value: clip_value must be >= 0"):
        tc.clip_grad_value(-1.0)


@pytest.mark.parametrize("shape", [(512, 384), (512 * 384,)])
def test_adafactor_step_writes_no_full_size_temporary(shape):
    """Adafactor's update is reduced (its RMS) and returned: computed once and shared, XLA writes
    it to memory for the reduction, a temporary the size of the leaf. The RMS is taken of the same
    values recomputed from separate nodes instead; a donated step needs under 1/8 of a leaf."""
    temporaries, leaf_bytes = donated_temporaries(lambda _: tc.adafactor(), gradx, shape=shape)
    assert temporaries < leaf_bytes // 8
