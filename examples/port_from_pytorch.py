"""Porting PyTorch training recipes to JAX with gradx.torch_compat, number for number.

    .venv/bin/python examples/port_from_pytorch.py [--smoke]

Two recipes train the same MLP (64-128-10) on scikit-learn's digits, from the same initial
weights and on the same batches:

* ``torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)`` + ``StepLR(step_size, 0.1)``
  → ``tc.sgd(lr=tc.step_lr(0.1, step_size, 0.1), momentum=0.9, weight_decay=5e-4)``;
* ``torch.optim.AdamW(weight_decay=0.05)`` + ``OneCycleLR(max_lr=1e-2)`` +
  ``clip_grad_norm_(1.0)`` → ``chain(tc.clip_grad_norm(1.0), tc.adamw(lr=tc.one_cycle_lr(...),
  betas=(tc.one_cycle_momentum(...), 0.999), weight_decay=0.05))``.

If torch is importable both run and the largest difference in loss and in weights is printed;
otherwise gradx runs alone. Writes examples/out/port_from_pytorch.png (loss and learning rate
of each recipe, torch and gradx overlaid). See the README section "Porting from PyTorch".
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import gradx
from gradx import torch_compat as tc
from quickstart import load_data

try:
    import torch
except ImportError:  # gradx alone
    torch = None

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def recipes(steps):
    """name -> (gradx transformation, gradx lr schedule, torch builder(params) -> (opt, sched),
    torch clipping norm or None)."""
    step_size = max(steps // 3, 1)
    sgd_lr = tc.step_lr(0.1, step_size, gamma=0.1)
    cycle_lr = tc.one_cycle_lr(1e-2, total_steps=steps)

    def torch_sgd(params):
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size, gamma=0.1)

    def torch_adamw(params):
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)

    return {
        "SGD + momentum + weight decay + StepLR": (
            tc.sgd(lr=sgd_lr, momentum=0.9, weight_decay=5e-4), sgd_lr, torch_sgd, None),
        "AdamW + OneCycleLR + clip_grad_norm": (
            gradx.chain(tc.clip_grad_norm(1.0),
                        tc.adamw(lr=cycle_lr, betas=(tc.one_cycle_momentum(steps), 0.999),
                                 weight_decay=0.05)),
            cycle_lr, torch_adamw, 1.0),
    }


def init_weights(seed=0):
    """torch-layout weights ([out, in]) from torch's own initialisation when available."""
    if torch is not None:
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(64, 128), torch.nn.Linear(128, 10)]
        return [(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
                for layer in layers]
    rng = np.random.default_rng(seed)
    uniform = lambda b, shape: rng.uniform(-b, b, shape).astype(np.float32)  # noqa: E731
    return [(uniform(n_in ** -0.5, (n_out, n_in)), uniform(n_in ** -0.5, n_out))
            for n_in, n_out in [(64, 128), (128, 10)]]


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    logits = h @ params["out"]["kernel"] + params["out"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def run_gradx(tx, weights, batches, x, y, desc):
    (w1, b1), (w2, b2) = weights
    params = {"hidden": {"kernel": jnp.asarray(w1.T), "bias": jnp.asarray(b1)},
              "out": {"kernel": jnp.asarray(w2.T), "bias": jnp.asarray(b2)}}

    @jax.jit
    def step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return gradx.apply_updates(params, updates), state, loss

    state, losses = tx.init(params), []
    for idx in tqdm(batches, desc=desc, leave=False):
        params, state, loss = step(params, state, x[idx], y[idx])
        losses.append(float(loss))
    return np.array(losses), [np.asarray(params[k]["kernel"]).T for k in ("hidden", "out")]


def run_torch(build, clip, weights, batches, x, y, desc):
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2]), weights):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    opt, sched = build(model.parameters())
    losses, lrs = [], []
    for idx in tqdm(batches, desc=desc, leave=False):
        lrs.append(opt.param_groups[0]["lr"])
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])),
                                                 torch.from_numpy(y[idx]).long())
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return np.array(losses), np.array(lrs), [model[0].weight.detach().numpy(),
                                             model[2].weight.detach().numpy()]


def main(smoke: bool = False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = 6 if smoke else 300
    x_train, _, y_train, _ = load_data()
    batches = np.random.default_rng(0).integers(0, len(x_train), (steps, 64))
    weights = init_weights()
    table = recipes(steps)
    fig, axes = plt.subplots(2, len(table), figsize=(12, 7), squeeze=False)
    differences = {}
    for column, (name, (tx, schedule, build, clip)) in enumerate(tqdm(table.items(),
                                                                       desc="recipes")):
        losses, kernels = run_gradx(tx, weights, batches, x_train, y_train, "gradx")
        lrs = np.asarray(schedule(jnp.arange(steps)))
        top, bottom = axes[0, column], axes[1, column]
        if torch is not None:
            t_losses, t_lrs, t_kernels = run_torch(build, clip, weights, batches, x_train,
                                                   y_train, "torch")
            differences[name] = (np.max(np.abs(losses - t_losses)),
                                 max(np.max(np.abs(a - b)) for a, b in zip(kernels, t_kernels)),
                                 np.max(np.abs(lrs - t_lrs)) / np.max(t_lrs))
            top.plot(t_losses, lw=3, alpha=0.4, color="tab:orange", label="torch")
            bottom.plot(t_lrs, lw=3, alpha=0.4, color="tab:orange", label="torch")
        top.plot(losses, lw=1, color="tab:blue", label="gradx.torch_compat")
        bottom.plot(lrs, lw=1, color="tab:blue", label="gradx.torch_compat")
        top.set(title=name, xlabel="step", ylabel="training loss", yscale="log")
        bottom.set(xlabel="step", ylabel="learning rate")
        top.legend()
        bottom.legend()
        tqdm.write(f"{name}: final loss {losses[-1]:.4f}")
    if torch is None:
        print("torch is not installed: ran gradx only.")
    for name, (loss_diff, weight_diff, lr_diff) in differences.items():
        print(f"{name}: max |loss diff| {loss_diff:.2e}, max |weight diff| {weight_diff:.2e}, "
              f"max |lr diff| / peak lr {lr_diff:.1e} over {steps} steps")
    fig.suptitle("PyTorch recipes ported with gradx.torch_compat: torch (thick) vs gradx (thin)"
                 if torch is not None else "PyTorch recipes ported with gradx.torch_compat")
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "port_from_pytorch.png")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
    return differences


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    main(parser.parse_args().smoke)
