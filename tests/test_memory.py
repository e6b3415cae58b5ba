"""Memory report: exact byte counts against the textbook figures, on a model-sized tree of
shapes (nothing allocated), plus attribution to params, buffers, entries and groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradx
from gradx.memory import MemoryReport, leaf_nbytes, memory_report

ROWS, COLS, CLASSES = 1024, 4096, 10


def model_shapes(dtype=jnp.float32):
    """A 1024x4096 layer and a 4096x10 head with their biases, as shapes only."""
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    return {"hidden": {"kernel": sds(ROWS, COLS), "bias": sds(COLS)},
            "head": {"kernel": sds(COLS, CLASSES), "bias": sds(CLASSES)}}


N = ROWS * COLS + COLS + COLS * CLASSES + CLASSES   # parameter elements
P = 4 * N                                            # their float32 bytes
COUNT = 4                                            # one int32 step count


@pytest.mark.parametrize("name, tx, buffers, shared", [
    ("sgd", gradx.sgd(0.1), 0, 0),
    ("momentum", gradx.sgd(0.1, momentum=0.9), 1, 0),
    ("nesterov", gradx.sgd(0.1, momentum=0.9, nesterov=True), 1, 0),
    ("adam", gradx.adam(1e-3), 2, COUNT),
    ("adamw", gradx.adamw(1e-3, weight_decay=0.1), 2, COUNT),
    ("lamb", gradx.lamb(1e-3), 2, COUNT),
    ("lion", gradx.lion(1e-4), 1, COUNT),
    ("rmsprop", gradx.rmsprop(1e-3), 1, 0),
])
def test_textbook_buffer_counts_in_bytes(name, tx, buffers, shared):
    report = memory_report(tx, model_shapes())
    assert report.total_bytes == buffers * P + shared, name
    assert report.shared_bytes == shared
    assert report.buffers_per_param == buffers
    assert report.param_bytes == P and report.num_params == N
    for row in report.params:
        assert row.state_bytes == buffers * row.param_bytes, row


def test_adafactor_factors_rows_and_columns():
    """The 1024x4096 kernel keeps a row (1024) and a column (4096) statistic; leaves it does
    not factor (biases; the head, whose short side 10 < min_dim_size_to_factor=128) keep a full
    second moment. Unused slots hold one element each."""
    report = memory_report(gradx.adafactor(), model_shapes())
    per_param = {row.path: row.state_bytes for row in report.params}
    assert per_param == {"hidden/kernel": 4 * (ROWS + COLS + 1),
                         "hidden/bias": 4 * (COLS + 2),
                         "head/kernel": 4 * (COLS * CLASSES + 2),
                         "head/bias": 4 * (CLASSES + 2)}
    assert report.buffers == {"0/count": COUNT,
                              "0/v_row": 4 * (ROWS + 1 + 1 + 1),
                              "0/v_col": 4 * (COLS + 1 + 1 + 1),
                              "0/v": 4 * (1 + COLS + COLS * CLASSES + CLASSES)}
    assert report.total_bytes == sum(per_param.values()) + COUNT
    assert report.buffers_per_param < 0.02   # vs 2 for Adam


def test_state_dtypes_count_their_own_bytes():
    """bfloat16 params: Adam's moments are bfloat16 (2 bytes); mu_dtype=bfloat16 on float32
    params halves the first moment only."""
    bf16 = memory_report(gradx.adam(1e-3), model_shapes(jnp.bfloat16))
    assert bf16.total_bytes == 2 * 2 * N + COUNT
    report = memory_report(gradx.adam(1e-3, mu_dtype=jnp.bfloat16), model_shapes())
    assert report.buffers == {"0/count": COUNT, "0/mu": 2 * N, "0/nu": 4 * N}
    assert report.buffers_per_param == 1.5


def test_nothing_is_allocated():
    """A 4 TB matrix: only its shape is used."""
    huge = {"w": jax.ShapeDtypeStruct((1_000_000, 1_000_000), jnp.float32)}
    report = memory_report(gradx.adam(1e-3), huge)
    assert report.total_bytes == 2 * 4 * 10 ** 12 + COUNT


def test_entries_groups_and_frozen_params():
    """partition with a frozen group: frozen leaves hold no state; per-group totals follow
    label_by_path; MultiSteps adds one param-sized accumulator."""
    labels = gradx.label_by_path({"head/*": "train"}, default="frozen")
    tx = gradx.partition({"train": gradx.adam(1e-3), "frozen": gradx.set_to_zero()}, labels)
    report = memory_report(tx, model_shapes(), labels=labels)
    head = 4 * (COLS * CLASSES + CLASSES)
    assert report.groups == {"frozen": 0, "train": 2 * head, "<shared>": COUNT}
    assert report.entries == {"inner_states (dict)": 2 * head + COUNT}
    assert report.buffers == {"inner_states/train/inner_state/0/count": COUNT,
                              "inner_states/train/inner_state/0/mu": head,
                              "inner_states/train/inner_state/0/nu": head}
    accumulated = memory_report(gradx.MultiSteps(gradx.adam(1e-3), 4), model_shapes())
    assert accumulated.buffers_per_param == 3
    assert accumulated.buffers["acc_grads"] == P
    assert accumulated.entries["inner_opt_state (tuple)"] == 2 * P + COUNT


def test_table_lists_params_buffers_entries_groups_and_total():
    report = memory_report(gradx.adamw(1e-3), model_shapes(), labels=gradx.weight_decay_mask())
    text = str(report)
    for expected in ["hidden/kernel  (1024, 4096)  float32  16.0 MiB",
                     "0/mu", "0/nu", "0/count", "0 (ScaleByAdamState)", "1 (EmptyState)",
                     "<shared>", f"({report.total_bytes:,} bytes)", "2 param-sized buffers"]:
        assert expected in text, expected
    assert text == report.table()


def test_nnx_state_params_and_prng_keys():
    """nnx.State params (from nnx.eval_shape: nothing allocated) read as plain paths; a typed
    PRNG key counts its key data (threefry: 2 x uint32)."""
    model = nnx.eval_shape(lambda: nnx.Linear(ROWS, COLS, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    report = memory_report(gradx.adam(1e-3), params)
    assert [row.path for row in report.params] == ["bias", "kernel"]
    assert report.total_bytes == 2 * 4 * (ROWS * COLS + COLS) + COUNT
    noisy = memory_report(gradx.noisy_sgd(0.1, key=jax.random.key(0)), model_shapes())
    assert noisy.buffers == {"0/count": COUNT, "0/rng_key": 8}
    assert leaf_nbytes(jax.random.key(0)) == 8 and leaf_nbytes(1.0) == 4


def test_report_from_traced_params_inside_jit():
    """Built at trace time from tracers, e.g. to log the state size from a train step."""
    seen = []

    @jax.jit
    def step(params):
        seen.append(memory_report(gradx.lion(1e-4), params))
        return params

    step({"w": jnp.ones((3, 5)), "b": jnp.ones(5)})
    assert isinstance(seen[0], MemoryReport)
    assert seen[0].total_bytes == 4 * 20 + COUNT


def test_prefix_labels_and_single_array_params():
    """Labels may be a prefix of the params; a tree that is not raises naming the problem."""
    prefix = memory_report(gradx.sgd(0.1, momentum=0.9), model_shapes(),
                           labels={"hidden": "body", "head": "head"})
    assert prefix.groups == {"head": 4 * (COLS * CLASSES + CLASSES),
                             "body": 4 * (ROWS * COLS + COLS)}
    with pytest.raises(ValueError, match="labels must have the params' structure or a prefix"):
        memory_report(gradx.sgd(0.1), model_shapes(), labels={"hidden": "a"})
    single = memory_report(gradx.adam(1e-3), jax.ShapeDtypeStruct((10, 3), jnp.float32))
    assert single.params[0].path == "<root>" and single.params[0].state_bytes == 240
    assert single.shared_bytes == COUNT
    np.testing.assert_equal(single.bytes_per_param, 244 / 30)
