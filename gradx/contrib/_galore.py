"""GaLore: the base optimizer runs on low-rank projections of matrix gradients, so its state is
small; the projector comes from the gradient's SVD every ``update_proj_gap`` steps."""

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from gradx import plumbing
from gradx.adam_family import scale_by_adam
from gradx.base import GradientTransformation, MaskOrFn, ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, PerLeaf, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the rows (``reduction_axis``) and the columns
    (``output_axis``) of the matrix GaLore projects; e.g. an attention kernel
    ``(embed, heads, head_dim)`` with ``reduction_axis=0, output_axis=(1, 2)``."""

    reduction_axis: Union[Sequence[int], int] = 0
    output_axis: Union[Sequence[int], int] = 1


class GaLoreState(NamedTuple):
    """State of GaLore: the step count, the base optimizer's state (on the low-rank gradients of
    projected leaves and the full gradients of the others) and one projector per leaf (a 0×0
    array for leaves that are not projected)."""

    count: jax.Array  # int32 scalar
    base_optimizer_state: Any
    projector: Any


class _Matrix(NamedTuple):
    """How one leaf is seen as an ``m×n`` matrix."""

    transpose: tuple
    inverse: tuple
    transposed_shape: tuple
    m: int
    n: int

    @classmethod
    def of(cls, shape, dims: GaLoreDimensionNumbers, path: str) -> "_Matrix":
        ndim = len(shape)
        if ndim < 2:
            raise ValueError(f"GaLore requires tensors with rank >= 2, got shape {shape} at "
                             f"'{path}'.")

        def axes(value):
            return tuple(a % ndim for a in ((value,) if isinstance(value, int) else value))

        rows, cols = axes(dims.reduction_axis), axes(dims.output_axis)
        if set(rows) & set(cols):
            raise ValueError(f"Reduction axes {rows} and output axes {cols} must be disjoint. "
                             f"Got dim_nums={dims} for shape {shape} at '{path}'.")
        if len(set(rows) | set(cols)) != ndim:
            raise ValueError(f"All axes must be specified. Got reduction={rows}, output={cols} "
                             f"for tensor with {ndim} dimensions at '{path}'.")
        transpose = rows + cols
        inverse = tuple(sorted(range(ndim), key=lambda i: transpose[i]))
        return cls(transpose, inverse, tuple(shape[a] for a in transpose),
                   math.prod(shape[a] for a in rows), math.prod(shape[a] for a in cols))

    def to_matrix(self, x):
        return x.transpose(self.transpose).reshape(self.m, self.n)

    def from_matrix(self, y):
        return y.reshape(self.transposed_shape).transpose(self.inverse)

    def shapes(self, rank):
        """Shapes of the projector and of the low-rank gradient: ``P`` is ``m×r`` and ``PᵀG`` is
        ``r×n`` when ``m ≥ n`` (left projection); ``P`` is ``n×r`` and ``GP`` is ``m×r`` else."""
        r = min(rank, self.m, self.n)
        return ((self.m, r), (r, self.n)) if self.m >= self.n else ((self.n, r), (self.m, r))


def _project(g, projector, *, matrix, refresh, rank):
    """One leaf: the projector (from the SVD of ``G`` when ``refresh``) and the low-rank
    gradient ``PᵀG`` (left) or ``GP`` (right); unprojected leaves pass through."""
    if matrix is None:
        return g, projector
    G = matrix.to_matrix(g)
    left, r = matrix.m >= matrix.n, min(rank, matrix.m, matrix.n)

    def from_svd():
        u, _, vh = jnp.linalg.svd(G.astype(jnp.float32), full_matrices=False)
        return (u[:, :r] if left else vh[:r, :].T).astype(projector.dtype)

    projector = jax.lax.cond(refresh, from_svd, lambda: projector)
    return (projector.T @ G if left else G @ projector), projector


def _project_back(u, projector, g, *, matrix, scale):
    """One leaf: ``scale · P·u`` (left) or ``scale · u·Pᵀ`` (right) in the leaf's shape."""
    if matrix is None:
        return u
    full = projector @ u if matrix.m >= matrix.n else u @ projector.T
    return (scale * matrix.from_matrix(full)).astype(g.dtype)


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
                    base_optimizer: Optional[GradientTransformation] = None,
                    weight_dimension_numbers: Any = None) -> GradientTransformation:
    """Runs ``base_optimizer`` on low-rank projections of the matrix leaves (GaLore).

    For a leaf seen as an ``m×n`` matrix ``G`` and ``r = min(rank, m, n)``: every
    ``update_proj_gap`` steps (at the 0-based steps 0, gap, 2·gap, ...) ``P`` becomes the first
    ``r`` left singular vectors of ``G`` when ``m ≥ n`` (else the first ``r`` right ones); the
    base optimizer sees ``R = PᵀG`` (``GP``), its state persists across projector changes, and
    its update ``N`` returns as ``scale·P·N`` (``scale·N·Pᵀ``). Other leaves go to the base
    optimizer whole and unscaled.

    ``weight_dimension_numbers``: ``None`` projects the 2-D leaves; one
    ``GaLoreDimensionNumbers`` applies to every leaf of rank ≥ 2; a tree of them (``None`` to
    skip a leaf), or a function of the params returning one. The base optimizer must not need
    the params (``scale_by_adam``, not ``adamw``): it gets ``params=None``.

    Defaults as Optax: ``rank=128, update_proj_gap=200, scale=1.0``, ``base_optimizer =
    scale_by_adam()``. State: ``GaLoreState(count, base_optimizer_state, projector)``. Same
    numbers as ``optax.contrib.scale_by_galore``; errors name the offending leaf's path.
    **Differs from Optax** with gradients in another dtype than the params (bfloat16 gradients,
    float32 params): Optax casts the refreshed projector to the gradients' dtype, its
    ``lax.cond`` branches then differ from the float32 state and it raises ``TypeError``; here
    the projector keeps the state's dtype.

    Reference: Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection", ICML 2024. The authors' ``galore_torch`` projects on the right when ``m ≥ n``
    (``proj_type='std'``), and ``pytorch_optimizer.GaLore`` differs in refresh timing too.
    """
    if not isinstance(rank, int):
        raise TypeError(f"`rank` must be an int, got {type(rank)}")
    if rank <= 0:
        raise ValueError(f"rank must be > 0, got rank={rank!r}.")
    if not isinstance(update_proj_gap, int) or update_proj_gap <= 0:
        raise ValueError(f"update_proj_gap must be a positive int, got "
                         f"update_proj_gap={update_proj_gap!r}.")
    base_optimizer = scale_by_adam() if base_optimizer is None else base_optimizer

    def matrices(tree):
        """One ``_Matrix`` (or ``None``: not projected) per leaf, in flattening order."""
        leaves, treedef = jax.tree.flatten(tree)
        if weight_dimension_numbers is None:
            dims = [GaLoreDimensionNumbers() if jnp.ndim(x) == 2 else None for x in leaves]
        elif isinstance(weight_dimension_numbers, GaLoreDimensionNumbers):
            dims = [weight_dimension_numbers if jnp.ndim(x) >= 2 else None for x in leaves]
        else:
            chosen = weight_dimension_numbers
            dims = treedef.flatten_up_to(chosen(tree) if callable(chosen) else chosen)
        return [None if d is None else _Matrix.of(jnp.shape(x), d, path)
                for x, d, path in zip(leaves, dims, plumbing.leaf_paths(tree))]

    # init is GaLore's own (below); the callable init marks the projector as a per-leaf structure.
    project = leafwise(
        _project, GaLoreState, (Moment("projector", init=jnp.zeros_like),),
        step_inputs=("updates",), elementwise=False,
        step_scalars=lambda count, updates: {
            "refresh": (count - 1) % update_proj_gap == 0, "rank": rank,
            "matrix": PerLeaf(matrices(updates))})

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        projectors, proxies = [], []
        for x, matrix in zip(leaves, matrices(params)):
            if matrix is None:
                projectors.append(jnp.zeros((0, 0), jnp.result_type(x)))
                proxies.append(jnp.zeros_like(x))
            else:
                projector_shape, low_rank_shape = matrix.shapes(rank)
                projectors.append(jnp.zeros(projector_shape, jnp.result_type(x)))
                proxies.append(jnp.zeros(low_rank_shape, jnp.result_type(x)))
        return GaLoreState(count=jnp.zeros([], jnp.int32),
                           base_optimizer_state=base_optimizer.init(treedef.unflatten(proxies)),
                           projector=treedef.unflatten(projectors))

    def update(updates, state, params=None):
        del params
        low_rank, state = project.update(updates, state)
        low_rank, base_state = base_optimizer.update(low_rank, state.base_optimizer_state, None)
        treedef, (grads, steps, projectors) = plumbing.flatten_matching(
            updates, [low_rank, state.projector], ["base updates", "state.projector"],
            shaped=[False, False])
        full = [_project_back(u, p, g, matrix=m, scale=scale)
                for g, u, p, m in zip(grads, steps, projectors, matrices(updates))]
        return treedef.unflatten(full), state._replace(base_optimizer_state=base_state)

    return GradientTransformation(init, update)


def galore(learning_rate: ScalarOrSchedule, rank: int = 128, update_proj_gap: int = 200,
           scale: float = 1.0, base_optimizer: Optional[GradientTransformation] = None,
           weight_decay=0.0, mask: MaskOrFn = None,
           weight_dimension_numbers: Union[Any, Callable, None] = None) -> GradientTransformation:
    """GaLore (Zhao et al., 2024): ``scale_by_galore``, then decoupled weight decay in the full
    parameter space (``mask`` selects the decayed leaves), then ``-η``.

    Defaults as Optax: ``rank=128, update_proj_gap=200, scale=1.0, weight_decay=0.0``, base
    ``scale_by_adam()``. A base optimizer that applies its own learning rate wants
    ``learning_rate=1.0`` here. Same numbers and state as ``optax.contrib.galore``.

    Examples:
      >>> tx = gradx.contrib.galore(learning_rate=0.1, rank=1)
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> galore_state = state[0]
      >>> galore_state.projector["w"].shape, galore_state.projector["b"].shape  # w: on the left
      ((3, 1), (0, 0))
      >>> grads = {"w": jnp.array([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]]), "b": jnp.ones(2)}
      >>> updates, state = tx.update(grads, state, params)
      >>> print(np.asarray(updates["w"], float).round(4))  # -η·P·sign(PᵀG): Adam's first step
      [[-0.0447 -0.0447]
       [-0.0894 -0.0894]
       [ 0.      0.    ]]
    """
    return chain(
        scale_by_galore(rank=rank, update_proj_gap=update_proj_gap, scale=scale,
                        base_optimizer=base_optimizer,
                        weight_dimension_numbers=weight_dimension_numbers),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
