"""gradx.contrib.dadapt_adamw and prodigy: against optax 0.2.8 (float32 and bf16, state
included), against the authors' packages (``dadaptation.DAdaptAdam``, ``prodigyopt.Prodigy``) in
float64 on both sides with each package's defaults and with Optax's settings, and the fix for
an all-zero first gradient (Optax's estimate turns NaN)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from dadaptation import DAdaptAdam
from prodigyopt import Prodigy

import gradx
from contrib_support import compare_by_name
from support import assert_trees_close, make_params, run, toward_target


OPTAX_CASES = [  # float32 with every argument set; bf16 with the defaults
    ("dadapt_adamw", {"learning_rate": lambda c: 1.0 / (1.0 + c), "betas": (0.8, 0.99),
                      "eps": 1e-6, "estim_lr0": 1e-3, "weight_decay": 0.1}, jnp.float32),
    ("prodigy", {"learning_rate": lambda c: 1.0 / (1.0 + c), "betas": (0.8, 0.99), "beta3": 0.9,
                 "eps": 1e-6, "estim_lr0": 1e-5, "estim_lr_coef": 2.0, "weight_decay": 0.1},
     jnp.float32),
    ("dadapt_adamw", {}, jnp.bfloat16),
    ("prodigy", {}, jnp.bfloat16),
]


@pytest.mark.parametrize("name, kwargs, dtype", OPTAX_CASES,
                         ids=["dadapt-f32", "prodigy-f32", "dadapt-bf16", "prodigy-bf16"])
def test_matches_optax(name, kwargs, dtype):
    _, state = compare_by_name(name, kwargs, dtype, grads_fn=toward_target)
    if dtype == jnp.float32:
        assert float(state.estim_lr) > 1.2 * kwargs["estim_lr0"]  # d did grow


def _torch_run(opt_cls, kwargs, n_steps, first_grads_zero=False):
    leaves = [torch.tensor(np.asarray(p, np.float64), requires_grad=True)
              for p in jax.tree.leaves(make_params())]
    opt = opt_cls(leaves, **kwargs)
    for step in range(n_steps):
        params = jax.tree.unflatten(jax.tree.structure(make_params()),
                                    [p.detach().numpy() for p in leaves])
        grads = jax.tree.leaves(toward_target(params, step))
        for p, g in zip(leaves, grads):
            p.grad = torch.tensor(g) * (0.0 if first_grads_zero and step == 0 else 1.0)
        opt.step()
    return [p.detach().numpy() for p in leaves], opt.param_groups[0]["d"]


def _gradx_run(tx, n_steps, first_grads_zero=False):
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), make_params())

        def grads(params, step):
            g = toward_target(jax.tree.map(np.asarray, params), step)
            return jax.tree.map(lambda x: 0.0 * x if first_grads_zero and step == 0 else x, g)

        _, params, state = run(tx, params, n_steps, grads_fn=grads)
        return [np.asarray(p) for p in jax.tree.leaves(params)], float(state.estim_lr)


REFERENCE_CASES = [  # (reference class, its arguments, gradx name, gradx arguments)
    (Prodigy, {}, "prodigy", {"use_bias_correction": False}),
    (Prodigy, {"use_bias_correction": True, "weight_decay": 0.1, "safeguard_warmup": True,
               "d_coef": 2.0, "beta3": 0.9, "d0": 1e-4}, "prodigy",
     {"weight_decay": 0.1, "safeguard_warmup": True, "estim_lr_coef": 2.0, "beta3": 0.9,
      "estim_lr0": 1e-4}),
    (DAdaptAdam, {}, "dadapt_adamw", {"decouple": False, "use_bias_correction": False}),
    (DAdaptAdam, {"weight_decay": 0.1}, "dadapt_adamw",
     {"weight_decay": 0.1, "decouple": False, "use_bias_correction": False}),
    (DAdaptAdam, {"decouple": True, "use_bias_correction": True, "weight_decay": 0.1},
     "dadapt_adamw", {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("ref_cls, ref_kwargs, name, kwargs", REFERENCE_CASES,
                         ids=["prodigyopt-defaults", "prodigyopt-as-optax-all",
                              "dadaptation-defaults", "dadaptation-l2", "dadaptation-as-optax"])
def test_matches_the_authors_package_in_float64(ref_cls, ref_kwargs, name, kwargs):
    """With each package's defaults the first gradient is all zero: the reference skips that
    step, gradx keeps d and moves nothing, and both then agree (Optax's d is NaN from there)."""
    first_zero = not ref_kwargs
    theirs, their_d = _torch_run(ref_cls, ref_kwargs, 12, first_zero)
    ours, our_d = _gradx_run(getattr(gradx.contrib, name)(**kwargs), 12, first_zero)
    assert their_d > 2 * ref_kwargs.get("d0", 1e-6)  # the estimate is exercised
    np.testing.assert_allclose(our_d, their_d, rtol=1e-10)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_optax_estimate_is_nan_after_an_all_zero_first_gradient(name):
    """What the fix above guards against: Optax divides 0 by ‖s‖₁ = 0."""
    params = {"w": jnp.ones(3)}
    tx = getattr(optax.contrib, name)()
    _, state = jax.jit(tx.update)({"w": jnp.zeros(3)}, tx.init(params), params)
    assert np.isnan(state.estim_lr)


@pytest.mark.parametrize("name, kwargs, argument", [
    ("dadapt_adamw", {"betas": (1.0, 0.999)}, "betas\\[0\\]"),
    ("dadapt_adamw", {"betas": (0.9, -0.1)}, "betas\\[1\\]"),
    ("dadapt_adamw", {"eps": -1.0}, "eps"),
    ("dadapt_adamw", {"estim_lr0": 0.0}, "estim_lr0"),
    ("prodigy", {"weight_decay": -0.1}, "weight_decay"),
    ("prodigy", {"beta3": 1.5}, "beta3"),
    ("prodigy", {"estim_lr_coef": 0.0}, "estim_lr_coef"),
])
def test_bad_hyperparameters_raise(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        getattr(gradx.contrib, name)(**kwargs)


@pytest.mark.parametrize("name", ["dadapt_adamw", "prodigy"])
def test_needs_params_and_ignores_extra_arguments(name):
    tx = getattr(gradx.contrib, name)()
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    jax.eval_shape(functools.partial(tx.update, value=1.0), params, tx.init(params), params)
