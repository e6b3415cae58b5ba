"""The linear assignment problem: given an ``n × m`` cost matrix, choose ``min(n, m)`` (row,
column) pairs, at most one per row and per column, of least total cost; Optax's
``optax.assignment``.

Both functions run one solver, the Hungarian algorithm with potentials and shortest augmenting
paths (Kuhn, 1955; Jonker & Volgenant's O(n²m) form), one row at a time under ``lax`` loops, so
they run under ``jit``. They return the pairs in the orders Optax's two functions use:
``base_hungarian_algorithm`` by increasing row, ``hungarian_algorithm`` in the order of its
column-to-row table (by increasing column for a square matrix). Costs must be finite.

Differs from Optax: Optax implements the two functions separately (Crouse's 2016 algorithm and
Scenic's); where several assignments are optimal, ``base_hungarian_algorithm`` may return
another one of the same cost than Optax's.

Examples:
  >>> cost = jnp.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]])
  >>> i, j = gradx.assignment.base_hungarian_algorithm(cost)
  >>> int(cost[i, j].sum()), i.tolist(), j.tolist()
  (15, [0, 1, 3], [0, 2, 1])
"""

import jax
import jax.numpy as jnp

__all__ = ["base_hungarian_algorithm", "hungarian_algorithm"]


def _row_of_column(cost: jax.Array) -> jax.Array:
    """For a cost matrix with no more rows than columns, the 1-based row assigned to each
    column (0: none), from ``rows`` successive shortest augmenting paths."""
    rows, cols = cost.shape
    a = jnp.pad(cost.astype(jnp.result_type(float)), ((1, 0), (1, 0)))  # 1-based; column 0: start

    def add_row(i, carry):
        u, v, row_of, way = carry
        row_of = row_of.at[0].set(i)

        def extend(state):  # grow the shortest-path tree by one column
            u, v, way, used, min_slack, column = state
            used = used.at[column].set(True)
            row = row_of[column]
            slack = a[row] - u[row] - v
            better = ~used & (slack < min_slack)
            min_slack = jnp.where(better, slack, min_slack)
            way = jnp.where(better, column, way)
            free = jnp.where(used, jnp.inf, min_slack)
            next_column = jnp.argmin(free)
            delta = free[next_column]
            u = u.at[row_of].add(jnp.where(used, delta, 0.0))
            v = jnp.where(used, v - delta, v)
            min_slack = jnp.where(used, min_slack, min_slack - delta)
            return u, v, way, used, min_slack, next_column

        start = (u, v, way, jnp.zeros(cols + 1, bool), jnp.full(cols + 1, jnp.inf, a.dtype), 0)
        u, v, way, _, _, column = jax.lax.while_loop(
            lambda state: row_of[state[-1]] != 0, extend, start)

        def augment(state):  # flip the assignments along the path back to column 0
            row_of, column = state
            previous = way[column]
            return row_of.at[column].set(row_of[previous]), previous

        row_of, _ = jax.lax.while_loop(lambda state: state[1] != 0, augment, (row_of, column))
        return u, v, row_of, way

    init = (jnp.zeros(rows + 1, a.dtype), jnp.zeros(cols + 1, a.dtype),
            jnp.zeros(cols + 1, int), jnp.zeros(cols + 1, int))
    _, _, row_of, _ = jax.lax.fori_loop(1, rows + 1, add_row, init)
    return row_of[1:]


def _solve(cost_matrix):
    """``(transposed, row_of_column)`` for the orientation with no more rows than columns."""
    transpose = cost_matrix.shape[0] > cost_matrix.shape[1]
    return transpose, _row_of_column(cost_matrix.T if transpose else cost_matrix)


def _empty(cost_matrix) -> bool:
    return cost_matrix.shape[0] == 0 or cost_matrix.shape[1] == 0


def base_hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The least-cost assignment ``(i, j)`` (cost ``cost_matrix[i, j].sum()``), with the rows
    ``i`` increasing."""
    if _empty(cost_matrix):
        return jnp.zeros(0, int), jnp.zeros(0, int)
    transpose, row_of = _solve(cost_matrix)
    n = min(cost_matrix.shape)
    unassigned = n  # out of bounds: dropped
    column_of = jnp.zeros(n, int).at[jnp.where(row_of > 0, row_of - 1, unassigned)].set(
        jnp.arange(row_of.shape[0]), mode="drop")
    if transpose:  # column_of maps each original column to its original row
        order = column_of.argsort()
        return column_of[order], order
    return jnp.arange(n), column_of


def hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The least-cost assignment ``(i, j)``, ordered as Optax's (Scenic's) implementation: by
    increasing column of the matrix with fewer rows, for a non-square one by decreasing row."""
    if _empty(cost_matrix):
        return jnp.zeros(0, int), jnp.zeros(0, int)
    transpose, row_of = _solve(cost_matrix)
    rows, cols = sorted(cost_matrix.shape)
    if rows == cols:
        rows_, columns = row_of, jnp.arange(rows)
    else:
        rows_, columns = jax.lax.top_k(row_of, rows)
    rows_ = rows_ - 1
    return (columns, rows_) if transpose else (rows_, columns)
