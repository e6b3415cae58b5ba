"""Checkpoints: exact round trips mid-schedule, mid-accumulation and with frozen/grouped params;
errors naming the first mismatching path; the state-format version; no data lost when a save
is interrupted; Flax NNX and Linen TrainState resumed from a checkpoint."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import gradx
from gradx import checkpoint
from support import make_grads, make_params

SAVE_AT, TOTAL = 5, 9


def apply(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


def train(tx, params, state, steps):
    """``steps`` jitted updates on the support gradients, numbered from ``steps.start``."""
    update = _jitted(tx)
    history = []
    for step in steps:
        updates, state = update(make_grads(params, step), state, params)
        history.append(updates)
        params = apply(params, updates)
    return history, params, state


_JITTED = {}


def _jitted(tx):
    """One compiled update per transformation, shared by the uninterrupted and resumed runs."""
    if id(tx) not in _JITTED:
        _JITTED[id(tx)] = (tx, jax.jit(tx.update))
    return _JITTED[id(tx)][1]


def assert_identical(actual, expected):
    """Same tree structure (state classes included), dtypes and bit-identical leaves."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype and a.shape == e.shape
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


LABELS = gradx.label_by_path({"dense/*": "adam", "conv": "frozen"}, default="momentum")

CONFIGS = {
    # warmup then cosine: step 5 of 9 is mid-schedule, the clip and the decay mask too.
    "schedule": lambda: gradx.chain(
        gradx.clip_by_global_norm(1.0),
        gradx.adamw(gradx.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 9), weight_decay=0.1,
                    mask=gradx.weight_decay_mask())),
    # every 3 mini-steps: 5 = one emitted update and 2 accumulated gradients.
    "accumulation": lambda: gradx.MultiSteps(gradx.adam(1e-2, mu_dtype=jnp.bfloat16), 3),
    "groups_frozen": lambda: gradx.partition(
        {"adam": gradx.adam(1e-2), "momentum": gradx.sgd(1e-2, momentum=0.9),
         "frozen": gradx.set_to_zero()}, LABELS),
    "freeze_hyperparams": lambda: gradx.chain(
        gradx.freeze({"dense": True, "scale": False, "conv": False, "head": False}),
        gradx.inject_hyperparams(gradx.lion)(learning_rate=1e-3)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_then_resume_is_exact(name, tmp_path):
    """Save after 5 steps, restore into a fresh ``tx.init`` (or its ``eval_shape``), run 4
    more: every update, the final params and state equal an uninterrupted 9-step run, bit for
    bit."""
    tx, params = CONFIGS[name](), make_params()
    full, full_params, full_state = train(tx, params, tx.init(params), range(TOTAL))
    _, mid_params, mid_state = train(tx, params, tx.init(params), range(SAVE_AT))
    checkpoint.save(tmp_path / "ckpt", mid_params, mid_state, step=SAVE_AT)

    like_state = (jax.eval_shape(tx.init, params) if name == "schedule" else tx.init(params))
    restored = checkpoint.restore(tmp_path / "ckpt", params, like_state)
    assert restored.step == SAVE_AT
    assert_identical(restored.params, mid_params)
    assert_identical(restored.opt_state, mid_state)
    rest, end_params, end_state = train(tx, restored.params, restored.opt_state,
                                        range(SAVE_AT, TOTAL))
    for step, (ours, theirs) in enumerate(zip(rest, full[SAVE_AT:]), SAVE_AT):
        assert_identical(ours, theirs)
    assert_identical(end_params, full_params)
    assert_identical(end_state, full_state)


def test_mid_accumulation_state_is_really_mid_accumulation(tmp_path):
    """The accumulation case saves a non-zero accumulator, one emitted update and bf16 mu."""
    tx, params = CONFIGS["accumulation"](), make_params()
    _, params, state = train(tx, params, tx.init(params), range(SAVE_AT))
    assert int(state.mini_step) == 2 and int(state.gradient_step) == 1
    checkpoint.save(tmp_path, params, state)
    restored = checkpoint.restore(tmp_path, params, tx.init(params))
    assert restored.step is None
    assert int(restored.opt_state.mini_step) == 2
    assert restored.opt_state.inner_opt_state[0].mu["conv"].dtype == jnp.bfloat16
    assert float(jnp.abs(restored.opt_state.acc_grads["head"]).sum()) > 0


def test_typed_prng_keys_round_trip(tmp_path):
    """add_noise's typed key (threefry) comes back as the same typed key."""
    params = make_params()
    state = gradx.noisy_sgd(0.1, key=jax.random.key(7)).init(params)
    checkpoint.save(tmp_path, params, state)
    like = gradx.noisy_sgd(0.1, key=jax.random.key(0)).init(params)
    restored = checkpoint.restore(tmp_path, params, like).opt_state
    assert restored[0].rng_key.dtype == like[0].rng_key.dtype
    assert_identical(restored, state)


def _saved_adam(tmp_path):
    params = make_params()
    tx = gradx.adam(1e-2)
    _, params, state = train(tx, params, tx.init(params), range(2))
    checkpoint.save(tmp_path, params, state, step=2)
    return params


@pytest.mark.parametrize("other, message", [
    (gradx.sgd(1e-2, momentum=0.9),
     "opt_state_like has '0/trace/conv' (shape (2, 3, 3, 4), float32, in TraceState) where "
     "the checkpoint has '0/count' (shape (), int32, in ScaleByAdamState)"),
    (gradx.adabelief(1e-2),
     "at '0/count': the checkpoint has shape (), int32, in ScaleByAdamState, opt_state_like "
     "has shape (), int32, in ScaleByBeliefState"),
    (gradx.adam(1e-2, mu_dtype=jnp.bfloat16),
     "at '0/mu/conv': the checkpoint has shape (2, 3, 3, 4), float32, in ScaleByAdamState, "
     "opt_state_like has shape (2, 3, 3, 4), bfloat16, in ScaleByAdamState"),
    (gradx.partition({"adam": gradx.adam(1e-2), "frozen": gradx.set_to_zero()},
                     gradx.label_by_path({"conv": "frozen"}, default="adam")),
     "opt_state_like has 'inner_states/adam/inner_state/0/count' (shape (), int32, in "
     "PartitionState/MaskedState/ScaleByAdamState) where the checkpoint has '0/count' "
     "(shape (), int32, in ScaleByAdamState)"),
    (gradx.adam(gradx.linear_schedule(1e-2, 0.0, 10)),
     "'1/count' is in opt_state_like but not in the checkpoint"),
])
def test_restoring_into_another_configuration_names_the_first_mismatch(tmp_path, other, message):
    params = _saved_adam(tmp_path)
    with pytest.raises(ValueError) as error:
        checkpoint.restore(tmp_path, params, other.init(params))
    assert str(error.value) == (f"The checkpoint in {str(tmp_path)!r} does not match "
                                f"opt_state_like: {message}.")


def test_restoring_other_params_or_a_shorter_state_names_the_path(tmp_path):
    params = _saved_adam(tmp_path)
    state = gradx.adam(1e-2).init(params)
    bigger = dict(params, head=jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"does not match params_like: at 'head': the checkpoint "
                                         r"has shape \(3, 2\), float32, params_like has shape "
                                         r"\(3, 5\), float32\.$"):
        checkpoint.restore(tmp_path, bigger, state)
    with pytest.raises(ValueError, match=r"does not match opt_state_like: '0/nu/conv' is in the "
                                         r"checkpoint but not in opt_state_like\.$"):
        checkpoint.restore(tmp_path, params, (state[0]._replace(nu={}), state[1]))


def test_state_format_version_is_saved_and_checked(tmp_path):
    _saved_adam(tmp_path)
    metadata = checkpoint.read_metadata(tmp_path)
    assert metadata["state_format_version"] == checkpoint.STATE_FORMAT_VERSION == 2
    assert metadata["step"] == 2 and metadata["gradx_version"] == gradx.__version__
    assert metadata["opt_state"][1] == {"path": "0/mu/conv", "shape": [2, 3, 3, 4],
                                        "dtype": "float32", "states": ["ScaleByAdamState"]}
    metadata["state_format_version"] = 3
    (tmp_path / checkpoint.METADATA_FILE).write_text(json.dumps(metadata))
    params = make_params()
    with pytest.raises(ValueError, match=r"has gradx state format version 3 \(written by gradx "
                                         r".*, newer than this one\); this gradx \(.*\) reads "
                                         r"versions 1 to 2: upgrade gradx\.$"):
        checkpoint.restore(tmp_path, params, gradx.adam(1e-2).init(params))
    with pytest.raises(FileNotFoundError, match="No gradx checkpoint in .*checkpoint.json is "):
        checkpoint.restore(tmp_path / "nothing", params, gradx.adam(1e-2).init(params))


def _interrupt_orbax_write(monkeypatch):
    """Orbax dies half-way: a partial data directory is left behind."""
    def broken_save(self, directory, *args, **kwargs):
        os.makedirs(directory)
        (directory / "half_written").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt("preempted while writing arrays")
    monkeypatch.setattr(ocp.Checkpointer, "save", broken_save)


def _interrupt_commit(monkeypatch):
    """The arrays are written but the process dies before the metadata is renamed in place."""
    def broken_replace(src, dst):
        raise KeyboardInterrupt("preempted before the commit")
    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)


@pytest.mark.parametrize("interrupt", [_interrupt_orbax_write, _interrupt_commit])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, interrupt):
    tx, params = gradx.adam(1e-2), make_params()
    _, old_params, old_state = train(tx, params, tx.init(params), range(2))
    checkpoint.save(tmp_path, old_params, old_state, step=2)
    _, new_params, new_state = train(tx, old_params, old_state, range(2, 4))
    with monkeypatch.context() as patch:
        interrupt(patch)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path, new_params, new_state, step=4)
    assert len(os.listdir(tmp_path)) > 2          # the interrupted save's leftovers
    restored = checkpoint.restore(tmp_path, params, tx.init(params))
    assert restored.step == 2
    assert_identical(restored.params, old_params)
    assert_identical(restored.opt_state, old_state)
    checkpoint.save(tmp_path, new_params, new_state, step=4)   # the next save cleans up
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["checkpoint.json", "data"]
    assert_identical(checkpoint.restore(tmp_path, params, tx.init(params)).opt_state, new_state)


def test_killed_process_leaves_the_previous_checkpoint(tmp_path):
    """A real crash: a child process overwriting the checkpoint is killed (``os._exit``, no
    cleanup runs) between writing the new metadata file and renaming it in place. The child
    also checks that importing gradx.checkpoint does not import Orbax (a lazy import)."""
    tx, params = gradx.adam(1e-2), make_params()
    state = tx.init(params)
    checkpoint.save(tmp_path, params, state, step=0)
    child = f"""
import os, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import gradx
from gradx import checkpoint
from support import make_params
assert "orbax" not in sys.modules
def killed(src, dst):
    assert os.path.getsize(src) > 0
    os._exit(3)
checkpoint.os.replace = killed
params = make_params(seed=5)
checkpoint.save({str(tmp_path)!r}, params, gradx.adam(1e-2).init(params), step=1)
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()[-2000:]
    restored = checkpoint.restore(tmp_path, params, state)
    assert restored.step == 0
    assert_identical(restored.params, params)


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


def _batches(n):
    rng = np.random.default_rng(0)
    return [(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
             jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)) for _ in range(n)]


@nnx.jit
def _nnx_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def test_nnx_optimizer_resumes_from_a_checkpoint(tmp_path):
    """nnx.Optimizer with grouped, accumulated updates: 3 steps, save, a fresh model and
    optimizer (other seed) restored from the checkpoint, 3 more steps: the losses equal an
    uninterrupted 6-step run exactly."""
    def make(seed):
        tx = gradx.MultiSteps(gradx.partition(
            {"adam": gradx.adamw(1e-2, mask=gradx.weight_decay_mask()),
             "sgd": gradx.sgd(1e-2, momentum=0.9)},
            gradx.label_by_path({"hidden/*": "adam"}, default="sgd")), 2)
        model = _MLP(nnx.Rngs(seed))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    batches = _batches(6)
    model, optimizer = make(0)
    full = [float(_nnx_step(model, optimizer, x, y)) for x, y in batches]

    model, optimizer = make(0)
    first = [float(_nnx_step(model, optimizer, x, y)) for x, y in batches[:3]]
    checkpoint.save(tmp_path, nnx.state(model, nnx.Param), nnx.state(optimizer),
                    step=int(optimizer.step[...]))
    model, optimizer = make(1)
    params, optimizer_state, step = checkpoint.restore(tmp_path, nnx.state(model, nnx.Param),
                                                       nnx.state(optimizer))
    nnx.update(model, params)
    nnx.update(optimizer, optimizer_state)
    assert step == int(optimizer.step[...]) == 3
    rest = [float(_nnx_step(model, optimizer, x, y)) for x, y in batches[3:]]
    assert first + rest == full


def test_linen_train_state_resumes_from_a_checkpoint(tmp_path):
    """A Linen TrainState with FrozenDict params, restored into a fresh TrainState."""
    import flax.linen as nn
    from flax.core import freeze

    module = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(2)])
    batches = _batches(6)
    tx = gradx.chain(gradx.clip_by_global_norm(1.0),
                     gradx.adamw(gradx.cosine_decay_schedule(1e-2, 6), weight_decay=0.1))

    def make(seed):
        params = freeze(module.init(jax.random.key(seed), batches[0][0])["params"])
        return train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)

    @jax.jit
    def step(state, x, y):
        loss_fn = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    def run(state, batches):
        losses = []
        for x, y in batches:
            state, loss = step(state, x, y)
            losses.append(float(loss))
        return state, losses

    _, full = run(make(0), batches)
    state, first = run(make(0), batches[:4])
    checkpoint.save(tmp_path, state.params, state.opt_state, step=int(state.step))
    fresh = make(1)
    params, opt_state, saved_step = checkpoint.restore(tmp_path, fresh.params, fresh.opt_state)
    resumed = fresh.replace(params=params, opt_state=opt_state, step=saved_step)
    _, rest = run(resumed, batches[4:])
    assert first + rest == full
    # gradx states have optax's classes and fields: the checkpoint restores into optax's state
    # for the same configuration; a constant learning rate (no schedule count) is refused.
    theirs = optax.chain(optax.clip_by_global_norm(1.0),
                         optax.adamw(optax.cosine_decay_schedule(1e-2, 6), weight_decay=0.1))
    their_state = theirs.init(fresh.params)
    restored = checkpoint.restore(tmp_path, fresh.params, their_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(their_state)
    assert_identical(jax.tree.leaves(restored.opt_state), jax.tree.leaves(opt_state))
    constant = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    with pytest.raises(ValueError, match="'1/2/count' is in the checkpoint but not in "
                                         "opt_state_like"):
        checkpoint.restore(tmp_path, fresh.params, constant.init(fresh.params))


# -- damaged checkpoints and older state-format versions -----------------------------------------

def _two_checkpoints(tmp_path):
    """Checkpoints of steps 2 and 3 in their own directories; returns what restore needs."""
    params = make_params()
    tx = gradx.adam(1e-2)
    _, params, state = train(tx, params, tx.init(params), range(2))
    checkpoint.save(tmp_path / "step2", params, state, step=2)
    _, params3, state3 = train(tx, params, state, range(2, 3))
    checkpoint.save(tmp_path / "step3", params3, state3, step=3)
    return params, state, tx.init(params)


def _largest_data_file(directory):
    data = directory / checkpoint.read_metadata(directory)["data"]
    return max((p for p in data.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "checkpoint.json").write_text((d / "checkpoint.json").read_text()[:200]),
     r"checkpoint.json is not valid JSON \(.*\); the file was truncated or overwritten"),
    (lambda d: (d / "checkpoint.json").write_bytes(b"\xff\xfe garbage"),
     r"checkpoint.json is not valid JSON"),
    (lambda d: (d / "checkpoint.json").write_text('{"step": 3}'),
     r"checkpoint.json has no \['state_format_version', 'data', 'params', 'opt_state'\]"),
    (lambda d: _largest_data_file(d).write_bytes(_largest_data_file(d).read_bytes()[:10]),
     r"its data file 'data-\w+/.*' has 10 bytes, \d+ were written \(truncated\?\)"),
    (lambda d: _largest_data_file(d).write_bytes(bytes(reversed(
        _largest_data_file(d).read_bytes()))),
     r"its data file .* does not hold the bytes that were written \(corrupted\)"),
    (lambda d: _largest_data_file(d).unlink(), r"its data file .* is missing"),
])
def test_damaged_checkpoint_raises_and_the_previous_one_loads(tmp_path, damage, message):
    params, state, like = _two_checkpoints(tmp_path)
    damage(tmp_path / "step3")
    with pytest.raises(ValueError, match=r"The gradx checkpoint in .*step3' is damaged: " + message):
        checkpoint.restore(tmp_path / "step3", params, like)
    restored = checkpoint.restore(tmp_path / "step2", params, like)
    assert restored.step == 2
    assert_identical(restored.opt_state, state)


def test_orbax_read_errors_are_reported_as_damage(tmp_path):
    """A checkpoint saved without digests (before they were recorded) whose data cannot be read:
    Orbax's error is wrapped in one that names the checkpoint."""
    params, _, like = _two_checkpoints(tmp_path)
    metadata = checkpoint.read_metadata(tmp_path / "step3")
    del metadata["files"]
    (tmp_path / "step3" / "checkpoint.json").write_text(json.dumps(metadata))
    import shutil
    shutil.rmtree(tmp_path / "step3" / metadata["data"])
    with pytest.raises(ValueError, match=r"is damaged: Orbax cannot read 'data-\w+' \("):
        checkpoint.restore(tmp_path / "step3", params, like)


def test_version_1_checkpoint_of_an_injected_schedule_loads(tmp_path):
    """State format 1 stored a schedule's count as a bare int32 at hyperparams_states/<name>;
    version 2 (Optax's layout) wraps it in WrappedScheduleState. A version-1 checkpoint loads."""
    params = make_params()
    tx = gradx.inject_hyperparams(gradx.adam)(learning_rate=gradx.linear_schedule(0.1, 0.0, 9))
    _, params, state = train(tx, params, tx.init(params), range(3))
    checkpoint.save(tmp_path, params, state, step=3)
    metadata = checkpoint.read_metadata(tmp_path)
    for record in metadata["opt_state"]:  # rewrite the records as version 1 wrote them
        if record["states"][-1:] == ["WrappedScheduleState"]:
            record["path"] = record["path"].removesuffix("/count")
            record["states"] = record["states"][:-1]
    metadata["state_format_version"] = 1
    (tmp_path / checkpoint.METADATA_FILE).write_text(json.dumps(metadata))
    restored = checkpoint.restore(tmp_path, params, tx.init(params))
    assert_identical(restored.opt_state, state)
    assert int(restored.opt_state.hyperparams_states["learning_rate"].count) == 3
    metadata["state_format_version"] = 0
    (tmp_path / checkpoint.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"has gradx state format version 0; this gradx \(.*\) "
                                         r"reads versions 1 to 2\.$"):
        checkpoint.restore(tmp_path, params, tx.init(params))
