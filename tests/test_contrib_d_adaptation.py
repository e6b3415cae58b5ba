"""gradx.contrib.dadapt_adamw and prodigy: against optax 0.2.8 (float32 and bf16, state
included), against the authors' packages (``dadaptation.DAdaptAdam``, ``prodigyopt.Prodigy``) in
float64 on both sides with each package's defaults and with Optax's settings, and the fix for
an all-zero first gradient (Optax's estimate turns NaN)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from dadaptation import DAdaptAdam
from prodigyopt import Prodigy

import gradx
from support import assert_trees_close, compare, make_params, run, toward_target


OPTAX_CASES = [
    ("dadapt_adamw", {}),
    ("dadapt_adamw", {"learning_rate": lambda c: 1.0 / (1.0 + c), "betas": (0.8, 0.99),
                      "eps": 1e-6, "estim_lr0": 1e-3, "weight_decay": 0.1}),
    ("prodigy", {}),
    ("prodigy", {"learning_rate": lambda c: 1.0 / (1.0 + c), "betas": (0.8, 0.99), "beta3": 0.9,
                 "eps": 1e-6, "estim_lr0": 1e-5, "estim_lr_coef": 2.0, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("name, kwargs", OPTAX_CASES, ids=["dadapt", "dadapt-all", "prodigy",
                                                          "prodigy-all"])
def test_matches_optax_in_float32_and_bf16(name, kwargs):
    ours, theirs = getattr(gradx.contrib, name)(**kwargs), getattr(optax.contrib, name)(**kwargs)
    _, state = compare(ours, theirs, grads_fn=toward_target)
    assert type(state).__name__ == type(theirs.init(make_params())).__name__
    assert state._fields == theirs.init(make_params())._fields
    assert float(state.estim_lr) > 1.2 * (kwargs.get("estim_lr0", 1e-6))  # d did grow
    if not kwargs:
        updates, _ = compare(ours, theirs, params=make_params(jnp.bfloat16), n_steps=3,
                             grads_fn=toward_target)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


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
    (Prodigy, {"use_bias_correction": True, "weight_decay": 0.1}, "prodigy",
     {"weight_decay": 0.1}),
    (Prodigy, {"safeguard_warmup": True, "d_coef": 2.0, "beta3": 0.9, "d0": 1e-4}, "prodigy",
     {"use_bias_correction": False, "safeguard_warmup": True, "estim_lr_coef": 2.0,
      "beta3": 0.9, "estim_lr0": 1e-4}),
    (DAdaptAdam, {"weight_decay": 0.1}, "dadapt_adamw",
     {"weight_decay": 0.1, "decouple": False, "use_bias_correction": False}),
    (DAdaptAdam, {"decouple": True, "use_bias_correction": True, "weight_decay": 0.1},
     "dadapt_adamw", {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("ref_cls, ref_kwargs, name, kwargs", REFERENCE_CASES,
                         ids=["prodigyopt-defaults", "prodigyopt-as-optax", "prodigyopt-safeguard",
                              "dadaptation-defaults-l2", "dadaptation-as-optax"])
def test_matches_the_authors_package_in_float64(ref_cls, ref_kwargs, name, kwargs):
    theirs, their_d = _torch_run(ref_cls, ref_kwargs, 12)
    ours, our_d = _gradx_run(getattr(gradx.contrib, name)(**kwargs), 12)
    assert their_d > 10 * ref_kwargs.get("d0", 1e-6)  # the estimate is exercised
    np.testing.assert_allclose(our_d, their_d, rtol=1e-10)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("ref_cls, name", [(Prodigy, "prodigy"), (DAdaptAdam, "dadapt_adamw")])
def test_all_zero_first_gradient_keeps_the_estimate(ref_cls, name):
    """Optax divides 0 by ‖s‖₁ = 0 and d stays NaN; gradx keeps d, moves nothing on that step,
    and then follows the reference, which skips the step."""
    params = {"w": jnp.ones(3)}
    tx = getattr(optax.contrib, name)()
    _, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    assert np.isnan(state.estim_lr)
    kwargs = {"use_bias_correction": False, **({"decouple": False} if name == "dadapt_adamw"
                                               else {})}
    tx = getattr(gradx.contrib, name)(**kwargs)
    updates, state = jax.jit(tx.update)({"w": jnp.zeros(3)}, tx.init(params), params)
    assert float(state.estim_lr) == np.float32(1e-6)
    np.testing.assert_array_equal(updates["w"], 0.0)
    theirs, their_d = _torch_run(ref_cls, {}, 8, first_grads_zero=True)
    ours, our_d = _gradx_run(tx, 8, first_grads_zero=True)
    np.testing.assert_allclose(our_d, their_d, rtol=1e-10)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-14)


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
    tx.update(params, tx.init(params), params, value=1.0)
