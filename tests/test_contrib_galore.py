"""gradx.contrib.galore / scale_by_galore against optax 0.2.8 (projector refreshes, a tree of
dimension numbers, bfloat16), and errors that name the leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.contrib import GaLoreDimensionNumbers as Dims
from support import compare, compare_bf16, make_params


def test_galore_matches_optax():
    """rank 2 with a refresh every 2 steps: projectors from the SVD at steps 0, 2 and 4."""
    kwargs = {"rank": 2, "update_proj_gap": 2, "weight_decay": 0.1}
    compare(gradx.contrib.galore(0.05, **kwargs), optax.contrib.galore(0.05, **kwargs), n_steps=5)


def test_scale_by_galore_with_dimension_numbers_bf16():
    """The 4-D kernel as an 18×4 matrix (left projection), the 3×2 head seen transposed (2×3:
    right projection), the dense leaves not projected; the base optimizer is SGD with
    momentum."""
    dims = {"conv": Dims((0, 1, 2), 3), "dense": {"kernel": None, "bias": None},
            "head": Dims(1, 0), "scale": None}
    kwargs = {"rank": 2, "update_proj_gap": 2, "scale": 0.5, "weight_dimension_numbers": dims}
    compare_bf16(gradx.contrib.scale_by_galore(base_optimizer=gradx.trace(0.9), **kwargs),
                 optax.contrib.scale_by_galore(base_optimizer=optax.trace(0.9), **kwargs))
    state = gradx.contrib.scale_by_galore(**kwargs).init(make_params())
    assert state.projector["conv"].shape == (18, 2) and state.projector["head"].shape == (3, 2)
    assert state.projector["dense"]["kernel"].shape == (0, 0)


def test_bad_input_names_the_argument_or_the_leaf():
    with pytest.raises(ValueError, match="rank"):
        gradx.contrib.galore(0.1, rank=0)
    with pytest.raises(TypeError, match="rank"):
        gradx.contrib.scale_by_galore(rank=2.0)
    with pytest.raises(ValueError, match="update_proj_gap"):
        gradx.contrib.scale_by_galore(update_proj_gap=0)
    with pytest.raises(ValueError, match="rank >= 2.*'dense/bias'"):
        gradx.contrib.scale_by_galore(weight_dimension_numbers={"dense": {"bias": Dims()}}).init(
            {"dense": {"bias": jnp.ones(3)}})
    with pytest.raises(ValueError, match="disjoint.*'w'"):
        gradx.contrib.scale_by_galore(weight_dimension_numbers={"w": Dims(0, 0)}).init(
            {"w": jnp.ones((2, 2))})


def test_bf16_gradients_with_f32_params():
    """Optax's refresh casts the new projector to the gradients' dtype, so lax.cond's branches
    differ (bf16 vs the f32 state) and it raises; here the projector keeps the state's dtype and
    the update is Optax's float32 one to bfloat16 precision."""
    params = {"w": jnp.ones((3, 2))}
    grads = {"w": jnp.array([[1.0, 2.0], [2.0, 4.5], [0.5, -1.0]], jnp.bfloat16)}
    ours = gradx.contrib.scale_by_galore(rank=1)
    u, state = jax.jit(ours.update)(grads, ours.init(params))
    assert u["w"].dtype == jnp.bfloat16 and state.projector["w"].dtype == jnp.float32
    theirs = optax.contrib.scale_by_galore(rank=1)
    with pytest.raises(TypeError, match="cond branches"):
        jax.jit(theirs.update)(grads, theirs.init(params))
    expected, _ = theirs.update(jax.tree.map(lambda g: g.astype(jnp.float32), grads),
                                theirs.init(params))
    np.testing.assert_allclose(np.asarray(u["w"], np.float32), expected["w"], rtol=2e-2,
                               atol=1e-2)
