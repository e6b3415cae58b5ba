"""Fine-tuning with parameter groups by path and layer-wise learning-rate decay (gradx.groups).

    .venv/bin/python examples/finetune_param_groups.py [--smoke]

A small residual network (embedding, three blocks with LayerNorm, a final norm, a head; Flax
NNX) is pretrained on scikit-learn's digits 0-4, gets a fresh head, and is fine-tuned on
digits 5-9 three ways:

* linear probe: only the head trains (``gradx.partition`` with ``set_to_zero`` for the body);
* one learning rate for every parameter (AdamW, warmup then linear decay);
* ``gradx.recipes.transformer_finetuning``: the head at 10x the rate, layer-wise decay 0.8
  (embedding 0.8^4 ... last block 0.8), no weight decay on biases and norms.

Prints the group report, the weight-decay mask and each parameter's learning-rate factor, then
the test accuracies, and writes examples/out/finetune_param_groups.png.
"""

import argparse
import os

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

import gradx
import gradx.recipes
from gradx.groups import label_by_path, layer_lr_scales, leaf_path, weight_decay_mask
from quickstart import accuracy, load_data, train_step

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
WIDTH, LAYERS, LAYER_DECAY, HEAD_MULTIPLIER = 64, 3, 0.8, 10.0


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.linear = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

    def __call__(self, x):
        return x + jax.nn.relu(self.linear(self.norm(x)))


class Net(nnx.Module):
    """Paths: embed/*, layers_0..2/{norm,linear}/*, final_norm/*, head/*."""

    def __init__(self, classes: int, rngs: nnx.Rngs):
        self.embed = nnx.Linear(64, WIDTH, rngs=rngs)
        for i in range(LAYERS):
            setattr(self, f"layers_{i}", Block(rngs))
        self.final_norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.head = nnx.Linear(WIDTH, classes, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        for i in range(LAYERS):
            x = getattr(self, f"layers_{i}")(x)
        return self.head(self.final_norm(x))


def split_tasks():
    """Digits 0-4 (pretraining) and 5-9 relabelled 0-4 (fine-tuning), train and test."""
    x_train, x_test, y_train, y_test = load_data()
    first = lambda x, y: (x[y < 5], y[y < 5])  # noqa: E731
    second = lambda x, y: (x[y >= 5], y[y >= 5] - 5)  # noqa: E731
    return ((first(x_train, y_train), first(x_test, y_test)),
            (second(x_train, y_train), second(x_test, y_test)))


def train(model, tx, data, steps, desc, batch=64, seed=0):
    (x, y), (x_test, y_test) = data
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    batches = np.random.default_rng(seed).integers(0, len(x), (steps, batch))
    losses = [float(train_step(model, optimizer, x[idx], y[idx]))
              for idx in tqdm(batches, desc=desc, leave=False)]
    return losses, float(accuracy(model, x_test, y_test)), optimizer


def with_new_head(pretrained):
    model = nnx.clone(pretrained)  # new Variables: training the copy leaves `pretrained` as is
    model.head = nnx.Linear(WIDTH, 5, rngs=nnx.Rngs(1))  # freshly initialised for the new task
    return model


def main(smoke: bool = False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pretrain_steps, finetune_steps = (5, 5) if smoke else (400, 300)
    pretraining, finetuning = split_tasks()

    pretrained = Net(5, nnx.Rngs(0))
    _, acc, _ = train(pretrained, gradx.adamw(3e-3, weight_decay=1e-4), pretraining,
                      pretrain_steps, "pretraining on 0-4")
    print(f"pretrained on digits 0-4: test accuracy {acc:.2%}")

    params = nnx.state(with_new_head(pretrained), nnx.Param)
    groups = label_by_path({gradx.recipes.HEAD: "head"}, default="body")
    print("\nParameter groups (gradx.groups.label_by_path):")
    print(groups.report(params))
    print("\nWeight-decay mask (gradx.groups.weight_decay_mask): decayed leaves")
    mask = weight_decay_mask()(params)
    print("  " + ", ".join(leaf_path(p) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
                           if m))
    factors = jax.tree_util.tree_flatten_with_path(layer_lr_scales(params, LAYER_DECAY))[0]
    scales = {leaf_path(p): float(np.ravel(f)[0]) * (HEAD_MULTIPLIER if label == "head" else 1.0)
              for (p, f), label in zip(factors, jax.tree.leaves(groups(params)))}
    print(f"\nLearning-rate factor per parameter (layer decay {LAYER_DECAY}, "
          f"head x{HEAD_MULTIPLIER:g}):")
    for path, factor in scales.items():
        print(f"  {path:<24} {factor:.4f}")

    lr = 1e-3
    strategies = {
        "linear probe (body frozen)": gradx.partition(
            {"head": gradx.adamw(lr * HEAD_MULTIPLIER), "body": gradx.set_to_zero()}, groups),
        "one learning rate": gradx.recipes.transformer_finetuning(
            finetune_steps, lr, head_lr_multiplier=1.0),
        f"head x{HEAD_MULTIPLIER:g} + layer decay {LAYER_DECAY}":
            gradx.recipes.transformer_finetuning(finetune_steps, lr,
                                                 head_lr_multiplier=HEAD_MULTIPLIER,
                                                 layer_decay=LAYER_DECAY),
    }
    curves = {}
    print(f"\nFine-tuning on digits 5-9 for {finetune_steps} steps:")
    for name, tx in tqdm(strategies.items(), desc="strategies"):
        losses, acc, optimizer = train(with_new_head(pretrained), tx, finetuning, finetune_steps,
                                       name)
        curves[name] = losses
        try:
            rates = {k: float(v) for k, v in gradx.read_state(optimizer.opt_state).items()
                     if k.endswith("learning_rate")}
        except ValueError:  # the linear probe holds no injected hyperparameters
            rates = {}
        tqdm.write(f"  {name:<32} test accuracy {acc:.2%}  last lrs {rates}")

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), width_ratios=(3, 2))
    for name, losses in curves.items():
        smooth = np.convolve(losses, np.ones(5) / 5, mode="valid") if len(losses) > 20 else losses
        left.plot(smooth, label=name)
    left.set(xlabel="step", ylabel="training loss (5-step mean)", yscale="log",
             title="Fine-tuning on digits 5-9 after pretraining on 0-4")
    left.legend()
    names = sorted(scales, key=lambda n: (scales[n], n))  # embedding first, head last
    right.barh(range(len(names)), [scales[n] for n in names],
               color=["tab:red" if n.startswith("head") else "tab:blue" for n in names])
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    right.set(xscale="log", xlabel="learning-rate factor",
              title=f"Per-parameter factor: layer decay {LAYER_DECAY}, head x{HEAD_MULTIPLIER:g}")
    fig.suptitle("Parameter groups by path with layer-wise learning-rate decay (gradx.groups)")
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "finetune_param_groups.png")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
    return curves


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    main(parser.parse_args().smoke)
