"""gradx.torch_compat schedules and reduce_lr_on_plateau against torch.optim.lr_scheduler 2.13."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as S

import gradx
import gradx.torch_compat as tc
from torch_compat_support import TorchRun, assert_close, assert_trajectories, make_grads, make_params

LR = 0.1


def torch_values(make_scheduler, n, lr=LR, optimizer="SGD", read=lambda group: group["lr"],
                 **opt_kwargs):
    """``read(param_group)`` after construction and after each of ``n`` scheduler steps."""
    opt = getattr(torch.optim, optimizer)([torch.nn.Parameter(torch.zeros(1))], lr=lr, **opt_kwargs)
    scheduler = make_scheduler(opt)
    values = [read(opt.param_groups[0])]
    for _ in range(n):
        opt.step()
        scheduler.step()
        values.append(read(opt.param_groups[0]))
    return np.asarray(values, np.float64)


def gradx_values(schedule, n):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n + 1)), np.float64)


# (gradx schedule, torch scheduler, steps): at least 3 periods where the schedule is periodic.
CASES = [
    (tc.step_lr(LR, 3, 0.5), lambda o: S.StepLR(o, 3, 0.5), 12),
    (tc.step_lr(LR, 2), lambda o: S.StepLR(o, 2), 8),
    (tc.multi_step_lr(LR, [2, 5, 5, 9], 0.5), lambda o: S.MultiStepLR(o, [2, 5, 5, 9], 0.5), 12),
    (tc.constant_lr(LR), lambda o: S.ConstantLR(o), 9),
    (tc.constant_lr(LR, 0.5, 4), lambda o: S.ConstantLR(o, 0.5, 4), 9),
    (tc.constant_lr(LR, 0.5, 0), lambda o: S.ConstantLR(o, 0.5, 0), 5),
    (tc.linear_lr(LR), lambda o: S.LinearLR(o), 9),
    (tc.linear_lr(LR, 0.2, 0.7, 6), lambda o: S.LinearLR(o, 0.2, 0.7, 6), 10),
    (tc.exponential_lr(LR, 0.8), lambda o: S.ExponentialLR(o, 0.8), 12),
    (tc.polynomial_lr(LR), lambda o: S.PolynomialLR(o), 9),
    (tc.polynomial_lr(LR, 6, 2.5), lambda o: S.PolynomialLR(o, 6, 2.5), 10),
    (tc.cosine_annealing_lr(LR, 5), lambda o: S.CosineAnnealingLR(o, 5), 32),
    (tc.cosine_annealing_lr(LR, 4, 0.01), lambda o: S.CosineAnnealingLR(o, 4, 0.01), 26),
    (tc.cosine_annealing_warm_restarts(LR, 3), lambda o: S.CosineAnnealingWarmRestarts(o, 3), 12),
    (tc.cosine_annealing_warm_restarts(LR, 2, 2, 0.01),
     lambda o: S.CosineAnnealingWarmRestarts(o, 2, 2, 0.01), 33),
    (tc.cosine_annealing_warm_restarts(LR, 1, 3), lambda o: S.CosineAnnealingWarmRestarts(o, 1, 3), 45),
    (tc.one_cycle_lr(1.0, 20), lambda o: S.OneCycleLR(o, 1.0, total_steps=20), 20),
    (tc.one_cycle_lr(0.5, 18, 0.25, "linear", 10.0, 100.0),
     lambda o: S.OneCycleLR(o, 0.5, total_steps=18, pct_start=0.25, anneal_strategy="linear",
                            div_factor=10.0, final_div_factor=100.0), 18),
    (tc.one_cycle_lr(1.0, 21, 0.3, three_phase=True),
     lambda o: S.OneCycleLR(o, 1.0, total_steps=21, three_phase=True), 21),
    (tc.cyclic_lr(0.01, LR, 3, 2), lambda o: S.CyclicLR(o, 0.01, LR, 3, 2), 16),
    (tc.cyclic_lr(0.01, LR, 2, mode="triangular2"),
     lambda o: S.CyclicLR(o, 0.01, LR, 2, mode="triangular2"), 14),
    (tc.cyclic_lr(0.01, LR, 3, 1, mode="exp_range", gamma=0.9),
     lambda o: S.CyclicLR(o, 0.01, LR, 3, 1, mode="exp_range", gamma=0.9), 14),
    (tc.cyclic_lr(0.01, LR, 2, scale_fn=lambda x: 1 / (1.0 + x), scale_mode="iterations"),
     lambda o: S.CyclicLR(o, 0.01, LR, 2, scale_fn=lambda x: 1 / (1.0 + x),
                          scale_mode="iterations"), 14),
    (tc.sequential_lr([tc.linear_lr(LR, 0.1, 1.0, 3), tc.cosine_annealing_lr(LR, 4)], [3]),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, 3), S.CosineAnnealingLR(o, 4)], [3]), 14),
    (tc.sequential_lr([tc.constant_lr(LR, 0.5, 10), tc.exponential_lr(LR, 0.7), tc.step_lr(LR, 2)],
                      [2, 5]),
     lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.5, 10), S.ExponentialLR(o, 0.7),
                                  S.StepLR(o, 2)], [2, 5]), 12),
    (tc.lambda_lr(LR, lambda t: 1 / (1.0 + t) + 0.1 * (t % 3)),
     lambda o: S.LambdaLR(o, lambda t: 1 / (1.0 + t) + 0.1 * (t % 3)), 12),
]


@pytest.mark.parametrize("schedule, make_scheduler, n", CASES, ids=[str(i) for i in range(len(CASES))])
def test_schedule_matches_torch(schedule, make_scheduler, n):
    assert_close(gradx_values(schedule, n), torch_values(make_scheduler, n), rtol=5e-5, atol=1e-8)


def test_momentum_cycles_match_torch():
    """one_cycle_momentum / cyclic_momentum equal the momentum (SGD) and betas[0] (Adam) torch sets."""
    n = 20
    for kwargs in (dict(), dict(pct_start=0.4, anneal_strategy="linear", base_momentum=0.7,
                                max_momentum=0.99), dict(three_phase=True)):
        ours = gradx_values(tc.one_cycle_momentum(n, **kwargs), n)
        theirs = torch_values(lambda o: S.OneCycleLR(o, 1.0, total_steps=n, **kwargs), n,
                              momentum=0.9, read=lambda g: g["momentum"])
        assert_close(ours, theirs, f"one-cycle momentum {kwargs}", atol=1e-8)
        theirs = torch_values(lambda o: S.OneCycleLR(o, 1.0, total_steps=n, **kwargs), n,
                              optimizer="Adam", read=lambda g: g["betas"][0])
        assert_close(ours, theirs, f"one-cycle beta1 {kwargs}", atol=1e-8)
    for kwargs in (dict(step_size_up=3, step_size_down=2), dict(step_size_up=2, mode="triangular2"),
                   dict(step_size_up=2, mode="exp_range", gamma=0.8)):
        ours = gradx_values(tc.cyclic_momentum(0.8, 0.9, **kwargs), 15)
        theirs = torch_values(lambda o: S.CyclicLR(o, 0.01, LR, **kwargs), 15, momentum=0.9,
                              read=lambda g: g["momentum"])
        assert_close(ours, theirs, f"cyclic momentum {kwargs}", atol=1e-8)


def test_cosine_annealing_stays_exact_for_large_steps():
    schedule = jax.jit(tc.cosine_annealing_lr(1.0, 7))
    for k in (0, 3, 1000, 10**6):
        np.testing.assert_allclose(schedule(2 * 7 * k), 1.0, rtol=1e-6)
        np.testing.assert_allclose(schedule(2 * 7 * k + 7), 0.0, atol=1e-7)


# Plateau: a metric with plateaus, a slight non-improvement within threshold, cooldown and min_lr.
METRIC = [5.0, 4.0, 4.0, 4.0, 4.0, 3.9999, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.95, 2.95, 2.95, 2.95,
          2.95, 2.95, 2.95, 2.95]
PLATEAU = [
    dict(factor=0.5, patience=2),
    dict(factor=0.5, patience=1, cooldown=2, min_lr=0.2),
    dict(factor=0.3, patience=0, threshold=0.1, threshold_mode="abs", min_lr=0.05),
    dict(mode="max", factor=0.5, patience=1, cooldown=1),
    dict(mode="max", factor=0.5, patience=1, threshold=0.02, threshold_mode="abs", min_lr=0.3),
    dict(factor=0.9, patience=0, min_lr=0.5, eps=0.06),
]


@pytest.mark.parametrize("kwargs", PLATEAU, ids=[str(i) for i in range(len(PLATEAU))])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    metric = [10 - m for m in METRIC] if kwargs.get("mode") == "max" else METRIC
    params, grads = make_params(), make_grads(len(metric))
    lr = 1.0
    tx = gradx.chain(tc.sgd(lr, momentum=0.9), tc.reduce_lr_on_plateau(lr, **kwargs))
    history, lrs = [], []

    def value(t):
        return {"value": jnp.asarray(metric[t])}

    ours, state, _ = run_plateau(tx, params, grads, value, lrs)
    torch_run = TorchRun("SGD", dict(lr=lr, momentum=0.9), params,
                         scheduler=lambda o: S.ReduceLROnPlateau(o, **kwargs))
    torch_lrs = []
    for t, g in enumerate(grads):
        history.append(torch_run.step(g, metric[t]))
        torch_lrs.append(torch_run.opt.param_groups[0]["lr"])
    assert len(set(torch_lrs)) >= 3, "the sequence must cut the lr at least twice"
    assert_close(np.asarray(lrs), np.asarray(torch_lrs), "lr after each step", atol=1e-8)
    assert_trajectories(ours, history, "plateau")
    torch_sched = torch_run.scheduler
    assert int(state[1].num_bad_epochs) == torch_sched.num_bad_epochs
    assert int(state[1].cooldown_counter) == torch_sched.cooldown_counter
    assert int(state[1].last_epoch) == torch_sched.last_epoch


def run_plateau(tx, params, grads, value, lrs):
    update = jax.jit(tx.update)
    params = jax.tree.map(jnp.asarray, params)
    state, history = tx.init(params), []
    for t, g in enumerate(grads):
        updates, state = update(jax.tree.map(jnp.asarray, g), state, params, **value(t))
        lrs.append(float(state[1].lr))
        params = gradx.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    return history, state, params


def test_plateau_bad_lr():
    with pytest.raises(ValueError, match="Invalid learning rate: lr must be > 0, got lr=0.0"):
        tc.reduce_lr_on_plateau(0.0)
    with pytest.raises(ValueError, match="Invalid min_lr value: min_lr must be >= 0"):
        tc.reduce_lr_on_plateau(0.1, min_lr=-1.0)


def test_plateau_needs_value():
    tx = tc.reduce_lr_on_plateau(0.1)
    with pytest.raises(ValueError, match="needs the monitored metric"):
        tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))


# Bad input: ValueError with torch's message; torch rejects the same input.
BAD = [
    (lambda: tc.one_cycle_lr(1.0, 10, anneal_strategy="cosine"),
     lambda o: S.OneCycleLR(o, 1.0, total_steps=10, anneal_strategy="cosine"),
     "anneal_strategy must be one of 'cos' or 'linear', instead got cosine"),
    (lambda: tc.one_cycle_momentum(10, anneal_strategy="exp"),
     lambda o: S.OneCycleLR(o, 1.0, total_steps=10, anneal_strategy="exp"),
     "anneal_strategy must be one of"),
    (lambda: tc.one_cycle_lr(1.0, 0), lambda o: S.OneCycleLR(o, 1.0, total_steps=0),
     "Expected positive integer total_steps, but got 0"),
    (lambda: tc.one_cycle_lr(1.0, 10, pct_start=1.5),
     lambda o: S.OneCycleLR(o, 1.0, total_steps=10, pct_start=1.5),
     "Expected float between 0 and 1 pct_start, but got 1.5"),
    (lambda: tc.cyclic_lr(0.1, 1.0, mode="sawtooth"), lambda o: S.CyclicLR(o, 0.1, 1.0, mode="sawtooth"),
     "mode is invalid and scale_fn is None: mode must be one of"),
    (lambda: tc.cyclic_momentum(mode="sawtooth"), lambda o: S.CyclicLR(o, 0.1, 1.0, mode="sawtooth"),
     "mode is invalid"),
    (lambda: tc.reduce_lr_on_plateau(0.1, mode="lowest"), lambda o: S.ReduceLROnPlateau(o, mode="lowest"),
     "mode lowest is unknown!"),
    (lambda: tc.reduce_lr_on_plateau(0.1, threshold_mode="relative"),
     lambda o: S.ReduceLROnPlateau(o, threshold_mode="relative"), "threshold mode relative is unknown!"),
    (lambda: tc.reduce_lr_on_plateau(0.1, factor=1.0), lambda o: S.ReduceLROnPlateau(o, factor=1.0),
     "Factor should be < 1.0"),
    (lambda: tc.cosine_annealing_warm_restarts(0.1, 0), lambda o: S.CosineAnnealingWarmRestarts(o, 0),
     "Expected positive integer T_0, but got 0"),
    (lambda: tc.cosine_annealing_warm_restarts(0.1, 2, 0),
     lambda o: S.CosineAnnealingWarmRestarts(o, 2, 0), "Expected integer T_mult >= 1, but got 0"),
    (lambda: tc.linear_lr(0.1, start_factor=0.0), lambda o: S.LinearLR(o, start_factor=0.0),
     "Starting multiplicative factor expected to be greater than 0"),
    (lambda: tc.linear_lr(0.1, end_factor=1.5), lambda o: S.LinearLR(o, end_factor=1.5),
     "Ending multiplicative factor expected to be between 0 and 1"),
    (lambda: tc.constant_lr(0.1, factor=2.0), lambda o: S.ConstantLR(o, factor=2.0),
     "Constant multiplicative factor expected to be between 0 and 1"),
    (lambda: tc.sequential_lr([tc.step_lr(0.1, 2)], [3]),
     lambda o: S.SequentialLR(o, [S.StepLR(o, 2)], [3]),
     "expects number of schedulers provided to be one more than the number of milestone points"),
]


@pytest.mark.parametrize("make_ours, make_torch, match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises_like_torch(make_ours, make_torch, match):
    with pytest.raises(ValueError, match=match):
        make_ours()
    with pytest.raises(ValueError):
        make_torch(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9))


def test_lambda_lr_needs_a_function():
    with pytest.raises(TypeError, match="lr_lambda should be a function, but got float"):
        tc.lambda_lr(0.1, 0.5)
