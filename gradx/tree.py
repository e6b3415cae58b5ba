"""Optax's ``optax.tree`` module: the tree helpers of ``gradx.tree_utils`` under short names
(``gradx.tree.norm is gradx.tree_utils.tree_norm``)."""

# ruff: noqa: A001 - Optax's names shadow builtins (max, min, set, sum)
from gradx import tree_utils as _tree_utils

cast = _tree_utils.tree_cast
cast_like = _tree_utils.tree_cast_like
dtype = _tree_utils.tree_dtype
random_like = _tree_utils.tree_random_like
split_key_like = _tree_utils.tree_split_key_like
unwrap_random_key_data = _tree_utils.tree_unwrap_random_key_data
get = _tree_utils.tree_get
get_all_with_path = _tree_utils.tree_get_all_with_path
map_params = _tree_utils.tree_map_params
set = _tree_utils.tree_set
add = _tree_utils.tree_add
add_scale = _tree_utils.tree_add_scale
allclose = _tree_utils.tree_allclose
batch_shape = _tree_utils.tree_batch_shape
bias_correction = _tree_utils.tree_bias_correction
clip = _tree_utils.tree_clip
conj = _tree_utils.tree_conj
div = _tree_utils.tree_div
full_like = _tree_utils.tree_full_like
max = _tree_utils.tree_max
min = _tree_utils.tree_min
mul = _tree_utils.tree_mul
norm = _tree_utils.tree_norm
ones_like = _tree_utils.tree_ones_like
real = _tree_utils.tree_real
scale = _tree_utils.tree_scale
size = _tree_utils.tree_size
sub = _tree_utils.tree_sub
sum = _tree_utils.tree_sum
update_infinity_moment = _tree_utils.tree_update_infinity_moment
update_moment = _tree_utils.tree_update_moment
update_moment_per_elem_norm = _tree_utils.tree_update_moment_per_elem_norm
vdot = _tree_utils.tree_vdot
where = _tree_utils.tree_where
zeros_like = _tree_utils.tree_zeros_like

__all__ = [
    "cast", "cast_like", "dtype", "random_like", "split_key_like", "unwrap_random_key_data", "get",
    "get_all_with_path", "map_params", "set", "add", "add_scale", "allclose", "batch_shape",
    "bias_correction", "clip", "conj", "div", "full_like", "max", "min", "mul", "norm",
    "ones_like", "real", "scale", "size", "sub", "sum", "update_infinity_moment", "update_moment",
    "update_moment_per_elem_norm", "vdot", "where", "zeros_like",
]
