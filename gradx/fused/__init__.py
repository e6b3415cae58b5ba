"""Fast path (opt-in): run a transformation over a few flat buffers, not many leaves.

An optimizer step is memory-bound, and on a model with many small leaves (norms, biases, deep
narrow stacks) the per-leaf kernels dominate: XLA emits a few kernels per leaf, so a step on
1000 leaves launches thousands of tiny loops and takes seconds to compile. ``fused(tx)`` runs
the *same* transformation over a different tree: the small leaves are raveled and concatenated
into flat buffers ("buckets"), one per dtype, group and placement, and leaves of at least
``inplace_min_size`` elements stay as they are. XLA then compiles each bucket's chain into the
loops it makes for one leaf, whatever the number of leaves.

When to use it: many small leaves (at 1000 leaves with the params kept flat, 0.09-0.16x Optax's
step and 0.06-0.21x its compile time in interleaved runs on a shared 2-core CPU, indicative; see
``benchmarks/RESULTS.md``). On a few large leaves the
default path is as fast. How::

    tx = fused(gradx.chain(gradx.clip_by_global_norm(1.0), gradx.adamw(schedule)))
    flat = flatten_params(params, tx=tx)          # once; unflatten_params(flat) in the loss
    state = tx.init(flat)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(flat, state, batch):
        grads = jax.grad(lambda f: loss(unflatten_params(f), batch))(flat)   # a FlatTree
        updates, state = tx.update(grads, state, flat)
        return gradx.apply_updates(flat, updates), state

Given the params' tree instead, ``fused(tx)`` is a drop-in (also inside ``nnx.Optimizer``): each
step packs the gradients and cuts the updates back into leaves, so some per-leaf work remains.

What runs on the buckets is read from what each part of ``tx`` declares (``gradx.tree_use``;
``gradx.fused.plan`` says how): elementwise rules, global reductions (``clip_by_global_norm``,
``with_telemetry``, ``apply_if_finite``, ``skip_bad_steps``, ``MultiSteps``), injected
hyperparameters and masks or groups by path (``masked``, ``partition``, ``adamw(mask=...)``: each
group gets buckets of its own). Parts that reduce over each leaf (LAMB, LARS, Adafactor, block
RMS clipping) run leaf by leaf on views of flat params; given the params' tree, ``fused`` then
keeps the reference path and ``fused_plan(tx, params)`` says which part and why. A user's own
transformation, which declares nothing, is analysed by its trace (``trace_check``).

Numbers are the reference path's: an elementwise rule does the same float operations on each
element in a bucket as in its leaf. Three things can change the last bits: XLA may rewrite a
scalar division differently in another fusion (``m / (c1 · d)`` on a leaf, ``m · (1/c1) / d`` on
a bucket: Adam's updates differ by up to a few ulp on realistic leaves; on small trees the paths
agree bit for bit, which ``tests/test_fused.py`` checks for every named optimizer); a global norm
sums per bucket rather than per leaf (the same value up to rounding; in bfloat16, where both
paths sum squares in bfloat16 as Optax does, up to bfloat16's rounding); and a stage on views is
fused differently from the same stage on a leaf.

Sharded params: a leaf sharded over devices stays in place (bucketing it would gather it), and
replicated leaves share buckets only with leaves replicated on the same mesh, so the step has no
collective the reference step does not have. Under ``jit`` with automatic sharding the params'
shardings are not visible: build the layout outside ``jit`` (``fused(tx).init(params)`` or
``flatten_params`` on the arrays), as a restore target would be.

State: on the flat path ``fused(tx).init(params)`` is a ``FusedState``: ``inner`` is ``tx``'s
state (same classes and fields) in which every params-shaped tree is a ``FlatTree``, and
``offsets`` where each bucketed leaf starts (int32 scalars, run-time inputs so that the leaves of
one shape share one kernel when updates are cut back into leaves; none with flat params, whose
updates stay flat, so their step has no argument per leaf). The reference
layout is one call away: ``to_reference_state`` (exact), ``from_reference_state`` back.
``gradx.checkpoint`` saves the reference layout (a checkpoint does not depend on the path, and
restores into either), ``memory_report`` reports it, and ``read_state`` / ``set_hyperparams``
see through it.

Flax: with Linen, keep ``flat = flatten_params(variables["params"], tx=tx)`` in the train state
and apply the model to ``{"params": unflatten_params(flat)}`` in the loss (``TrainState`` works
with ``apply_fn`` doing that). With NNX, split the model once (``graphdef, params, rest =
nnx.split(model, nnx.Param, ...)``), keep ``flatten_params(params, tx=tx)``, and merge inside the
loss (``nnx.merge(graphdef, unflatten_params(flat), rest)``); ``tests/test_fused_use.py`` has
both, step for step equal to the reference path.

Why it is opt-in: the default path keeps Optax's state layout (``state[0].mu['w']``, Optax
checkpoints, per-path memory figures), which the bucketed state is not.

Differs from Optax: Optax has no such path (``optax.flatten`` ravels every leaf into one vector
each step, which costs a full copy of params, updates and state per step, and changes the
state layout without a conversion).
"""

from gradx.fused.layout import (DEFAULT_INPLACE_MIN_SIZE, FlatTree, flatten_params,
                                unflatten_params)
from gradx.fused.plan import FusedPlan
from gradx.fused.state import (FusedState, from_reference_like, from_reference_state,
                               reference_like, to_reference_state)
from gradx.fused.transform import fused, fused_plan

__all__ = ["fused", "fused_plan", "FusedPlan", "FusedState", "FlatTree", "flatten_params",
           "unflatten_params", "to_reference_state", "from_reference_state", "reference_like",
           "from_reference_like", "DEFAULT_INPLACE_MIN_SIZE"]
