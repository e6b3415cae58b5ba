"""Named recipes: the optimizer settings of well-known training setups, each one function call.

Every recipe returns an ordinary gradx transformation built from the public blocks
(``adamw``, ``clip_by_global_norm``, the schedules, ``gradx.groups``, ``partition``), with the
optimizer wrapped in ``inject_hyperparams``, so the learning rate of the last step and the other
hyperparameters can be read back with ``gradx.read_state(state)`` (per group under the
fine-tuning recipe: ``'body/learning_rate'``, ``'head/learning_rate'``)::

    tx = gradx.recipes.transformer_pretraining(total_steps=100_000)
    state = tx.init(params)
    ...
    gradx.read_state(state)["learning_rate"]

Each docstring gives the source of its numbers (paper or codebase). The defaults are those
numbers; every one of them is an argument. The recipes are starting points, not tuned values
for your model.

* ``transformer_pretraining``: AdamW (0.9, 0.95), weight decay 0.1 on matrices, warmup then
  cosine to 10%, clipping at 1.0 (GPT-3, LLaMA).
* ``transformer_finetuning``: AdamW 2e-5, weight decay 0.01 off biases and norms, 6% warmup then
  linear to 0, clipping at 1.0, head at 10x, optional layer-wise decay (BERT, RoBERTa, ELECTRA).
* ``vision_sgd``: SGD with Nesterov momentum 0.9, L2 5e-4, cosine or step (x0.2) schedule (WRN).
* ``memory_lean_adafactor``: Adafactor without momentum, relative step ``min(1e-2, 1/√t)``.
* ``memory_lean_lion``: Lion at AdamW's rate ÷10 and weight decay x10, warmup then cosine.
* ``rl_adam``: Adam with eps 1e-5, clipping at 0.5, constant or linear to 0 (PPO).
* ``rl_rmsprop``: centered RMSprop, decay 0.95, eps 0.01 (DQN).
"""

import re
from typing import Any, Optional, Sequence, Union

from gradx import checks
from gradx.base import GradientTransformationExtraArgs, Schedule, identity
from gradx.clipping import clip_by_global_norm
from gradx.combine import chain
from gradx.groups import Pattern, label_by_path, layerwise_lr_decay, weight_decay_mask
from gradx.hyperparams import inject_hyperparams
from gradx.optimizers import adafactor, adam, adamw, lion, rmsprop, sgd
from gradx.partition import partition
from gradx.schedules import (cosine_decay_schedule, inverse_sqrt_schedule,
                             linear_schedule, piecewise_constant_schedule, warmup,
                             warmup_cosine_decay_schedule, warmup_linear_decay_schedule)
from gradx.weight_decay import add_decayed_weights

__all__ = ["transformer_pretraining", "transformer_finetuning", "vision_sgd",
           "memory_lean_adafactor", "memory_lean_lion", "rl_adam", "rl_rmsprop", "HEAD"]

Tx = GradientTransformationExtraArgs

#: The default pattern of a freshly initialised task head: a path component named ``head``,
#: ``classifier`` or ``qa_outputs`` (Hugging Face's names for classification and QA heads).
HEAD = re.compile(r"(^|/)(head|classifier|qa_outputs)(/|$)")


def _clipped(clip_norm: Optional[float], tx: Tx) -> Tx:
    """``chain(clip_by_global_norm(clip_norm), tx)``, or ``tx`` when ``clip_norm`` is None."""
    if clip_norm is None:
        return tx
    checks.positive("clip_norm", clip_norm)
    return chain(clip_by_global_norm(clip_norm), tx)


def _warmup_cosine(peak: float, total_steps: int, warmup_steps: int,
                   min_lr_ratio: float) -> Schedule:
    """Linear warmup from 0 to ``peak``, then cosine decay to ``min_lr_ratio·peak`` at
    ``total_steps`` (warmup included)."""
    checks.in_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0, high_open=False)
    checks.non_negative("warmup_steps", warmup_steps)
    return warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps,
                                        end_value=min_lr_ratio * peak)


def transformer_pretraining(total_steps: int, peak_learning_rate: float = 3e-4,
                            warmup_steps: int = 2000, *, b1: float = 0.9, b2: float = 0.95,
                            eps: float = 1e-8, weight_decay: float = 0.1,
                            min_lr_ratio: float = 0.1, clip_norm: Optional[float] = 1.0,
                            mask: Any = None) -> Tx:
    """Transformer (LLM) pretraining: AdamW (0.9, 0.95), weight decay 0.1 on matrices only,
    linear warmup then cosine decay to 10% of the peak, global-norm clipping at 1.0.

    ``chain(clip_by_global_norm(clip_norm), inject_hyperparams(adamw)(schedule, b1, b2, eps,
    weight_decay, mask))`` with ``schedule = warmup_cosine_decay_schedule(0, peak,
    warmup_steps, total_steps, min_lr_ratio·peak)`` (``total_steps`` includes the warmup).
    ``mask`` defaults to ``gradx.groups.weight_decay_mask()``: decay on leaves of 2 or more
    dimensions (kernels, embeddings), none on biases and normalisation scales.

    Defaults: ``peak_learning_rate=3e-4``, ``warmup_steps=2000``, ``b1=0.9``, ``b2=0.95``,
    ``eps=1e-8``, ``weight_decay=0.1``, ``min_lr_ratio=0.1``, ``clip_norm=1.0``.

    Sources: Brown et al., "Language Models are Few-Shot Learners" (GPT-3), 2020, Appendix B:
    Adam β = (0.9, 0.95), ε = 1e-8, global-norm clipping at 1.0, cosine decay to 10% of the peak
    after a linear warmup, weight decay 0.1. Touvron et al., "LLaMA", 2023 (Optimizer section
    and Table 2): the same with 2000 warmup steps and a peak of 3e-4 (7B, 13B); Llama 2 uses
    ε = 1e-5. Matrices-only decay as in nanoGPT's ``configure_optimizers`` (Karpathy).
    """
    checks.positive("peak_learning_rate", peak_learning_rate)
    schedule = _warmup_cosine(peak_learning_rate, total_steps, warmup_steps, min_lr_ratio)
    optimizer = inject_hyperparams(adamw)(
        schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
        mask=weight_decay_mask() if mask is None else mask)
    return _clipped(clip_norm, optimizer)


def _as_rules(patterns: Union[Pattern, Sequence[Pattern]], label: str) -> list:
    if isinstance(patterns, (str, re.Pattern)) or callable(patterns):
        patterns = [patterns]
    return [(pattern, label) for pattern in patterns]


def transformer_finetuning(total_steps: int, learning_rate: float = 2e-5, *,
                           warmup_fraction: float = 0.06, b1: float = 0.9, b2: float = 0.999,
                           eps: float = 1e-6, weight_decay: float = 0.01,
                           clip_norm: Optional[float] = 1.0,
                           head: Optional[Union[Pattern, Sequence[Pattern]]] = HEAD,
                           head_lr_multiplier: float = 10.0, layer_decay: Optional[float] = None,
                           num_layers: Optional[int] = None, mask: Any = None) -> Tx:
    """BERT-style fine-tuning: AdamW at about 2e-5, warmup over 6% of the steps then linear
    decay to zero, clipping at 1.0, no decay on biases and norms, a larger learning rate for the
    new head, optional layer-wise learning-rate decay.

    Two groups by path (``gradx.groups.label_by_path``): ``'head'`` (leaves matching ``head``,
    by default a path component ``head``, ``classifier`` or ``qa_outputs``) and ``'body'``
    (the rest). Each runs ``inject_hyperparams(adamw)`` with the schedule
    ``warmup_linear_decay_schedule(0, lr, W, total_steps)``, ``W = round(warmup_fraction ·
    total_steps)``, multiplied by ``head_lr_multiplier`` for the head. The chain is::

        clip_by_global_norm(clip_norm)
        partition({'body': adamw(...), 'head': adamw(lr × head_lr_multiplier ...)}, labels)
        layerwise_lr_decay(layer_decay, num_layers)        # only when layer_decay is given

    so a leaf of layer ``l`` (embeddings 0, block ``k`` → ``k + 1``, head and other top
    leaves ``num_layers``; see ``gradx.groups.layer_ids``) moves with learning rate
    ``lr · decay^(num_layers - l)``, exactly like PyTorch parameter groups with those rates.
    ``mask`` defaults to ``gradx.groups.weight_decay_mask()`` (no decay on biases, LayerNorm
    parameters and other vectors). ``read_state`` gives ``'body/learning_rate'`` and
    ``'head/learning_rate'``. ``head=None`` puts every leaf in ``'body'``.

    Defaults: ``learning_rate=2e-5``, ``warmup_fraction=0.06``, ``b1=0.9``, ``b2=0.999``,
    ``eps=1e-6``, ``weight_decay=0.01``, ``clip_norm=1.0``, ``head_lr_multiplier=10``,
    ``layer_decay=None`` (off; 0.8 for base-size and 0.9 for large models is usual).

    Sources: Devlin et al., "BERT", 2019, Appendices A.2-A.3 (Adam, β = (0.9, 0.999), weight
    decay 0.01, linear decay; fine-tuning lr in {5e-5, 3e-5, 2e-5}) and google-research/bert
    ``optimization.py`` (ε = 1e-6, clipping at 1.0, no decay on ``LayerNorm`` and ``bias``);
    Liu et al., "RoBERTa", 2019, Table 10 (warmup ratio 0.06, linear decay); Hugging Face
    ``get_linear_schedule_with_warmup`` and ``Trainer`` (``max_grad_norm=1.0``); Clark et al.,
    "ELECTRA", 2020, Table 7 (layer-wise decay 0.8 base, 0.9 large); Howard & Ruder,
    "ULMFiT", 2018 (larger rates for the layers nearest the new task).
    """
    checks.positive("learning_rate", learning_rate)
    checks.in_range("warmup_fraction", warmup_fraction, 0.0, 1.0)
    checks.positive("head_lr_multiplier", head_lr_multiplier)
    schedule = warmup_linear_decay_schedule(0.0, learning_rate,
                                            int(round(warmup_fraction * total_steps)), total_steps)
    mask = weight_decay_mask() if mask is None else mask
    factory = inject_hyperparams(adamw)

    def group(lr_schedule):
        return factory(lr_schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)

    labels = label_by_path(_as_rules(head, "head") if head is not None else [], default="body")
    groups = partition({"body": group(schedule),
                        "head": group(lambda count: head_lr_multiplier * schedule(count))},
                       labels)
    decay = (identity() if layer_decay is None
             else layerwise_lr_decay(layer_decay, num_layers))
    return _clipped(clip_norm, chain(groups, decay))


def _sgd_l2(learning_rate, momentum, nesterov, weight_decay, mask) -> Tx:
    """SGD with coupled L2 weight decay, ``torch.optim.SGD(weight_decay=...)``'s form."""
    return chain(add_decayed_weights(weight_decay, mask),
                 sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def vision_sgd(total_steps: int, learning_rate: float = 0.1, *, momentum: float = 0.9,
               nesterov: bool = True, weight_decay: float = 5e-4, schedule: str = "cosine",
               milestones: Sequence[float] = (0.3, 0.6, 0.8), gamma: float = 0.2,
               warmup_steps: int = 0, mask: Any = None) -> Tx:
    """Vision from scratch (ResNets, Wide ResNets): SGD with Nesterov momentum 0.9 and L2 weight
    decay 5e-4, with a cosine or step schedule.

    ``inject_hyperparams(chain(add_decayed_weights(weight_decay, mask), sgd(schedule, momentum,
    nesterov)))``: the decay is coupled (added to the gradient before the momentum, as
    ``torch.optim.SGD(weight_decay=...)``), on every leaf unless ``mask`` says otherwise.
    With ``D = total_steps - warmup_steps``: ``schedule='cosine'`` is
    ``cosine_decay_schedule(lr, D)`` to 0 (SGDR without restarts); ``schedule='step'``
    multiplies the rate by ``gamma`` at each fraction of ``D`` in ``milestones``.
    ``warmup_steps > 0`` puts a linear warmup from 0 in front (``gradx.warmup``; the decay
    starts when it ends), for large batches.

    Defaults: ``learning_rate=0.1``, ``momentum=0.9``, ``nesterov=True``, ``weight_decay=5e-4``,
    ``schedule='cosine'``, ``milestones=(0.3, 0.6, 0.8)``, ``gamma=0.2``, ``warmup_steps=0``.

    Sources: Zagoruyko & Komodakis, "Wide Residual Networks", 2016, experimental setup (SGD
    with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by 0.2 at epochs 60, 120
    and 160 of 200: the step milestones here); He et al., "Deep Residual Learning", 2016
    (lr 0.1, momentum 0.9); Loshchilov & Hutter, "SGDR", 2017 (cosine annealing); Goyal et al.,
    "Accurate, Large Minibatch SGD", 2017 (warmup).
    """
    checks.positive("learning_rate", learning_rate)
    checks.one_of("schedule", schedule, ("cosine", "step"))
    checks.non_negative("warmup_steps", warmup_steps)
    decay_steps = total_steps - warmup_steps
    if schedule == "cosine":
        lr = cosine_decay_schedule(learning_rate, decay_steps)
    else:
        checks.positive("gamma", gamma)
        for fraction in milestones:
            checks.in_range("milestones", fraction, 0.0, 1.0, low_open=True)
        lr = piecewise_constant_schedule(
            learning_rate, {int(round(f * decay_steps)): gamma for f in milestones})
    if warmup_steps:
        lr = warmup(lr, warmup_steps)
    return inject_hyperparams(_sgd_l2)(
        lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, mask=mask)


def memory_lean_adafactor(learning_rate: Optional[Union[float, Schedule]] = None, *,
                          decay_rate: float = 0.8, clipping_threshold: Optional[float] = 1.0,
                          multiply_by_parameter_scale: bool = True,
                          min_dim_size_to_factor: int = 128,
                          weight_decay_rate: Optional[float] = None) -> Tx:
    """Memory-lean training with Adafactor: factored second moments (a row and a column vector
    per matrix instead of a full matrix) and no first moment.

    ``inject_hyperparams(adafactor)(learning_rate, decay_rate, clipping_threshold, ...,
    momentum=None)``. ``learning_rate=None`` gives the paper's relative step size
    ``min(1e-2, 1/√t)`` (``t`` the step from 0, i.e. ``inverse_sqrt_schedule(1e-2, 10_000,
    init_value=1e-2)``: 1e-2 for the first 10⁴ steps, then ``1/√t``), which
    ``multiply_by_parameter_scale`` turns into a step relative to each matrix's RMS. For
    fine-tuning, T5 used a constant ``learning_rate=1e-3``.

    Defaults: ``decay_rate=0.8`` (``β₂ = 1 - t^-0.8``), ``clipping_threshold=1.0``,
    ``multiply_by_parameter_scale=True``, ``min_dim_size_to_factor=128``, no weight decay.

    Sources: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
    ICML 2018, Algorithm 4 and its recommended settings (β₁ = 0, d = 1, β̂₂ = 1 - t^-0.8,
    ρ_t = min(1e-2, 1/√t));
    Raffel et al., "Exploring the Limits of Transfer Learning" (T5), 2020, §3.1.2
    (``1/√max(n, k)`` with ``k = 10⁴``; 1e-3 constant for fine-tuning).
    """
    if learning_rate is None:
        learning_rate = inverse_sqrt_schedule(1e-2, 10_000, init_value=1e-2)
    return inject_hyperparams(adafactor, static_args=("min_dim_size_to_factor", "decay_offset",
                                                      "dtype_momentum"))(
        learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold, momentum=None, weight_decay_rate=weight_decay_rate)


def memory_lean_lion(total_steps: int, adamw_learning_rate: float = 3e-4, warmup_steps: int = 2000,
                     *, adamw_weight_decay: float = 0.1, lr_ratio: float = 10.0, b1: float = 0.9,
                     b2: float = 0.99, min_lr_ratio: float = 0.1,
                     clip_norm: Optional[float] = 1.0, mask: Any = None) -> Tx:
    """Memory-lean training with Lion (one moment instead of AdamW's two), translated from an
    AdamW setting: learning rate ``lr_ratio`` times smaller, weight decay ``lr_ratio`` times
    larger, so that the decay per step ``lr·wd`` is unchanged.

    The pretraining recipe with Lion in AdamW's place: ``chain(clip_by_global_norm(clip_norm),
    inject_hyperparams(lion)(schedule, b1, b2, weight_decay=adamw_weight_decay·lr_ratio,
    mask))``, ``schedule = warmup_cosine_decay_schedule(0, adamw_learning_rate/lr_ratio,
    warmup_steps, total_steps, min_lr_ratio·peak)``; ``mask`` defaults to
    ``gradx.groups.weight_decay_mask()``.

    Defaults: ``adamw_learning_rate=3e-4``, ``warmup_steps=2000``, ``adamw_weight_decay=0.1``,
    ``lr_ratio=10`` (so Lion runs at 3e-5 with weight decay 1.0), ``b1=0.9``, ``b2=0.99``,
    ``min_lr_ratio=0.1``, ``clip_norm=1.0``.

    Source: Chen et al., "Symbolic Discovery of Optimization Algorithms" (Lion), 2023 ("the
    default learning rate for Lion is typically 3-10x smaller than that for AdamW ...
    the value of λ for Lion is 3-10x larger", β = (0.9, 0.99)); 10 is the cautious end of that
    range.
    """
    checks.positive("adamw_learning_rate", adamw_learning_rate)
    checks.in_range("lr_ratio", lr_ratio, 1.0, float("inf"))
    schedule = _warmup_cosine(adamw_learning_rate / lr_ratio, total_steps, warmup_steps,
                              min_lr_ratio)
    optimizer = inject_hyperparams(lion)(
        schedule, b1=b1, b2=b2, weight_decay=adamw_weight_decay * lr_ratio,
        mask=weight_decay_mask() if mask is None else mask)
    return _clipped(clip_norm, optimizer)


def rl_adam(learning_rate: float = 3e-4, *, eps: float = 1e-5, clip_norm: Optional[float] = 0.5,
            anneal_steps: Optional[int] = None) -> Tx:
    """Reinforcement learning (PPO, A2C-style actor-critic) with Adam: ε = 1e-5, global-norm
    clipping at 0.5, optionally the learning rate annealed linearly to 0.

    ``chain(clip_by_global_norm(clip_norm), inject_hyperparams(adam)(lr, eps=eps))`` with
    ``lr = linear_schedule(learning_rate, 0, anneal_steps)`` when ``anneal_steps`` is given,
    else constant.

    Defaults: ``learning_rate=3e-4`` (MuJoCo; 2.5e-4 for Atari), ``eps=1e-5``,
    ``clip_norm=0.5``, ``anneal_steps=None``.

    Sources: Schulman et al., "Proximal Policy Optimization Algorithms", 2017, Tables 3 and 5
    (Adam, 3e-4 on MuJoCo; 2.5e-4 annealed linearly to 0 on Atari); Huang et al., "The 37
    Implementation Details of Proximal Policy Optimization", ICLR blog track 2022 (OpenAI
    baselines' ε = 1e-5 and ``max_grad_norm=0.5``).
    """
    checks.positive("learning_rate", learning_rate)
    lr = (learning_rate if anneal_steps is None
          else linear_schedule(learning_rate, 0.0, anneal_steps))
    return _clipped(clip_norm, inject_hyperparams(adam)(lr, eps=eps))


def rl_rmsprop(learning_rate: float = 2.5e-4, *, decay: float = 0.95, eps: float = 0.01,
               centered: bool = True, clip_norm: Optional[float] = None) -> Tx:
    """Reinforcement learning (DQN) with RMSprop: centered, decay 0.95, ε = 0.01 inside the
    square root.

    ``inject_hyperparams(rmsprop)(learning_rate, decay, eps, centered=True)``:
    ``m ← ρ·m + (1-ρ)·g``, ``v ← ρ·v + (1-ρ)·g²``, ``u = -η·g/√(v - m² + ε)``;
    ``clip_norm`` adds global-norm clipping in front.

    Defaults: ``learning_rate=2.5e-4``, ``decay=0.95``, ``eps=0.01``, ``centered=True``, no
    clipping.

    Sources: Mnih et al., "Human-level control through deep reinforcement learning" (DQN),
    Nature 2015, Extended Data Table 1 (RMSProp, learning rate 0.00025, gradient momentum 0.95,
    squared gradient momentum 0.95, min squared gradient 0.01) and DeepMind's
    ``NeuralQLearner.lua`` (the centered form above). A2C (Mnih et al., 2016; OpenAI baselines)
    uses ``rl_rmsprop(7e-4, decay=0.99, eps=1e-5, centered=False, clip_norm=0.5)``.
    """
    checks.positive("learning_rate", learning_rate)
    return _clipped(clip_norm, inject_hyperparams(rmsprop)(learning_rate, decay=decay, eps=eps,
                                                           centered=centered))
