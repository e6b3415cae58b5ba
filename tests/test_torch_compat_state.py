"""Resuming torch runs in gradx (and back) through state_dict conversion; torch param groups."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gradx
import gradx.torch_compat as tc
from torch_compat_support import (TorchRun, assert_close, assert_trajectories, make_grads,
                                  make_params, run_gradx)

N = 8  # steps before and after the checkpoint

RESUME = [
    ("SGD", tc.sgd, dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
    ("Adam", tc.adam, dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
    ("AdamW", tc.adamw, dict(lr=0.05)),
    ("Adamax", tc.adamax, dict(lr=0.05)),
    ("NAdam", tc.nadam, dict(lr=0.05)),
    ("RAdam", tc.radam, dict(lr=0.05)),
    ("RMSprop", tc.rmsprop, dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", tc.adagrad, dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1)),
    ("Adadelta", tc.adadelta, dict(lr=0.5)),
    ("Rprop", tc.rprop, dict(lr=0.05)),
    ("ASGD", tc.asgd, dict(lr=0.05, t0=3)),
    ("Adafactor", tc.adafactor, dict(lr=0.05)),
]


def checkpoint(state_dict):
    """What ``torch.save`` then ``torch.load`` gives back."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("name, fn, kwargs", RESUME, ids=[r[0] for r in RESUME])
def test_resume_torch_run_in_gradx_and_back(name, fn, kwargs):
    params, grads = make_params(), make_grads(2 * N)
    torch_run = TorchRun(name, kwargs, params)
    torch_run.run(grads[:N])
    saved = checkpoint(torch_run.opt.state_dict())
    tx = fn(**kwargs)
    resumed = jax.tree.map(jnp.asarray, torch_run.params())
    state = tc.from_torch_state_dict(tx, resumed, saved, step=N if name == "SGD" else None)
    assert int(state.step) == N
    ours, state, final = run_gradx(tx, resumed, grads[N:], state=state)
    assert_trajectories(ours, torch_run.run(grads[N:]), f"{name} resumed in gradx")

    # Back: the gradx state continues in a fresh torch optimizer.
    back = TorchRun(name, kwargs, jax.tree.map(np.asarray, final))
    back.opt.load_state_dict(tc.to_torch_state_dict(
        state, final, back.opt.state_dict()["param_groups"], array_fn=torch.as_tensor))
    more = make_grads(4, seed=7)
    ours, _, _ = run_gradx(tx, final, more, state=state)
    assert_trajectories(ours, back.run(more), f"{name} resumed in torch")


def test_fresh_torch_state_gives_init_state():
    params = make_params()
    tx = tc.adam(0.1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.tensor(p)) for p in jax.tree.leaves(params)])
    state = tc.from_torch_state_dict(tx, params, opt.state_dict())
    assert_close(state, tx.init(params))


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 4)
        self.fc2 = torch.nn.Linear(4, 2)


def test_mapping_by_names_with_transposed_kernels():
    """A Flax-style tree (kernels [in, out]) resumes a torch model's run (weights [out, in])."""
    torch.manual_seed(0)
    model = MLP()
    names = {"Dense_0": {"kernel": "fc1.weight", "bias": "fc1.bias"},
             "Dense_1": {"kernel": "fc2.weight", "bias": "fc2.bias"}}
    torch_params = dict(model.named_parameters())

    def to_flax(path, field, array):
        return array.T if path.endswith("kernel") else array

    def flax_tree():
        return jax.tree.map(lambda n: jnp.asarray(torch_params[n].detach().numpy().T if "weight" in n
                                                  else torch_params[n].detach().numpy()), names)

    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda n: rng.normal(size=torch_params[n].shape).astype(np.float32), names)
             for _ in range(2 * N)]
    opt = torch.optim.Adam(model.named_parameters(), lr=0.05, weight_decay=0.1)
    where = {n: (layer, key) for layer, d in names.items() for key, n in d.items()}

    def torch_step(g):
        for n, p in torch_params.items():
            p.grad = torch.tensor(g[where[n][0]][where[n][1]])
        opt.step()

    for g in grads[:N]:
        torch_step(g)
    tx = tc.adam(0.05, weight_decay=0.1)
    params = flax_tree()
    state = tc.from_torch_state_dict(tx, params, checkpoint(opt.state_dict()), names=names,
                                     convert=to_flax)
    flax_grads = [jax.tree.map(lambda g, n: g.T if "weight" in n else g, g, names)
                  for g in grads[N:]]
    ours, state, _ = run_gradx(tx, params, flax_grads, state=state)
    for g in grads[N:]:
        torch_step(g)
    assert_close(ours[-1], flax_tree(), "params by name")
    # Back to torch by names: the same per-parameter state torch has.
    ours_sd = tc.to_torch_state_dict(state, params, opt.state_dict()["param_groups"], names=names,
                                     convert=to_flax)
    for i, entry in opt.state_dict()["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert_close(ours_sd["state"][i][field], entry[field].numpy(), f"{i} {field}")
    # torch_names: the same mapping from a list in torch's order.
    order = [n for n, _ in model.named_parameters()]
    plain = {k: v for k, v in opt.state_dict().items()}
    plain["param_groups"] = [{k: v for k, v in g.items() if k != "param_names"}
                             for g in plain["param_groups"]]
    again = tc.from_torch_state_dict(tx, params, plain, names=names, torch_names=order,
                                     convert=to_flax)
    with pytest.raises(ValueError, match="no 'param_names'"):
        tc.from_torch_state_dict(tx, params, plain, names=names)
    assert_close(again, tc.from_torch_state_dict(tx, params, opt.state_dict(), names=names,
                                                 convert=to_flax))


LABELS = {"w": "body", "b": "head", "s": "body", "k": "head"}


def torch_groups(head, body):
    def spec(tensors):
        by_label = {"head": [], "body": []}
        for label, t in zip(jax.tree.leaves(LABELS), tensors):
            by_label[label].append(t)
        return [{"params": by_label["head"], **head}, {"params": by_label["body"], **body}]
    return spec


@pytest.mark.parametrize("name, fn, defaults, head, body", [
    ("SGD", tc.sgd, dict(lr=0.05, momentum=0.9, weight_decay=0.1), dict(lr=0.2, weight_decay=0.0),
     dict()),
    ("AdamW", tc.adamw, dict(lr=0.05, weight_decay=0.05), dict(lr=0.01, weight_decay=0.5),
     dict(betas=(0.8, 0.9))),
])
def test_param_groups_match_torch_and_resume(name, fn, defaults, head, body):
    params, grads = make_params(), make_grads(2 * N)
    groups = {"head": head, "body": body}
    tx = tc.param_groups(fn, LABELS, groups, **defaults)
    ours, _, _ = run_gradx(tx, params, grads)
    torch_run = TorchRun(name, defaults, params, groups=torch_groups(head, body))
    assert_trajectories(ours, torch_run.run(grads[:N]) + torch_run.run(grads[N:]), name)

    # Resume from torch after N steps, torch numbering group by group.
    torch_run = TorchRun(name, defaults, params, groups=torch_groups(head, body))
    torch_run.run(grads[:N])
    state = tc.from_torch_state_dict(tx, torch_run.params(), checkpoint(torch_run.opt.state_dict()),
                                     names=tc.torch_indices(LABELS, groups), step=N)
    ours, _, _ = run_gradx(tx, torch_run.params(), grads[N:], state=state)
    assert_trajectories(ours, torch_run.run(grads[N:]), f"{name} groups resumed")


def test_param_groups_with_a_label_function_and_plateau_per_group():
    params, grads = make_params(), make_grads(6)
    groups = {"head": {"lr": 0.2}, "body": {}}
    tx = tc.param_groups(lambda **kw: gradx.chain(tc.sgd(**kw), tc.reduce_lr_on_plateau(kw["lr"],
                                                                                         patience=0)),
                         lambda p: LABELS, groups, lr=0.05)
    ours, _, _ = run_gradx(tx, params, grads, extra_args=lambda t: {"value": jnp.asarray(1.0)})
    torch_run = TorchRun("SGD", dict(lr=0.05), params, groups=torch_groups(groups["head"], {}),
                         scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0))
    assert_trajectories(ours, torch_run.run(grads, metrics=[1.0] * 6), "groups + plateau")


def test_errors_name_the_problem():
    params = make_params()
    with pytest.raises(ValueError, match="parameter 'k' has label 'tail', which is not a group"):
        tx = tc.param_groups(tc.sgd, {**LABELS, "k": "tail"}, {"head": {}, "body": {}})
        tx.init(params)
    torch_run = TorchRun("Adam", dict(lr=0.1), params)
    grads = make_grads(1)[0]
    torch_run.tensors[1].grad = None
    for i, (p, g) in enumerate(zip(torch_run.tensors, jax.tree.leaves(grads))):
        p.grad = None if i == 1 else torch.tensor(np.array(g))
    torch_run.opt.step()
    with pytest.raises(ValueError, match="torch has no optimizer state for 'k'"):
        tc.from_torch_state_dict(tc.adam(0.1), params, torch_run.opt.state_dict())
    torch_run = TorchRun("Adam", dict(lr=0.1), params)
    torch_run.run([grads])
    swapped = {**params, "w": params["w"].T}
    with pytest.raises(ValueError, match=r"'exp_avg' for 'w' \(torch parameter \d\) has shape "
                                         r"\(4, 3\), the gradx state needs \(3, 4\): the same "
                                         r"sizes in another layout: rearrange the array with "
                                         r"convert="):
        tc.from_torch_state_dict(tc.adam(0.1), swapped, torch_run.opt.state_dict())
    torch_run = TorchRun("SGD", dict(lr=0.1, momentum=0.9), params)
    torch_run.run([grads])
    with pytest.raises(ValueError, match="torch's SGD keeps no step count: pass step="):
        tc.from_torch_state_dict(tc.sgd(0.1, momentum=0.9), params, torch_run.opt.state_dict())
    with pytest.raises(ValueError, match="'b' is named 'nope', which is not a torch parameter name"):
        tc.from_torch_state_dict(tc.sgd(0.1), params, torch_run.opt.state_dict(),
                                 names={"w": "a", "b": "nope", "s": "c", "k": "d"},
                                 torch_names=["a", "c", "d", "e"])
