"""gradx.contrib has Optax 0.2.8's signatures (gradx only adds keyword-only
arguments at the end) and state classes."""

import inspect

import optax
import pytest

import gradx

FUNCTIONS = [
    "acprop", "scale_by_acprop", "ademamix", "scale_by_ademamix", "simplified_ademamix",
    "scale_by_simplified_ademamix", "adopt", "scale_by_adopt", "madgrad", "scale_by_madgrad",
    "galore", "scale_by_galore", "schedule_free", "schedule_free_eval_params",
    "schedule_free_sgd", "schedule_free_adamw", "split_real_and_imaginary",
    "cocob", "scale_by_cocob", "dadapt_adamw", "prodigy", "dog", "dowg", "momo", "momo_adam",
    "mechanize", "sam", "normalize", "differentially_private_aggregate", "dpsgd",
]
STATES = ["ScaleByAdemamixState", "ScaleBySimplifiedAdEMAMixState", "MadgradState",
          "GaLoreDimensionNumbers", "GaLoreState", "ScheduleFreeState",
          "SplitRealAndImaginaryState", "COCOBState", "DAdaptAdamWState", "ProdigyState",
          "DoGState", "DoWGState", "MomoState", "MomoAdamState", "MechanicState", "SAMState",
          "NormalizeState", "DifferentiallyPrivateAggregateState"]


def _same_default(ours, theirs):
    if callable(ours) and callable(theirs) and ours is not inspect.Parameter.empty:
        return ours(16.0) == theirs(16.0)  # clip_value_fn: x**0.25
    return ours == theirs


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signature_extends_optax(name):
    ours = list(inspect.signature(getattr(gradx.contrib, name)).parameters.values())
    theirs = list(inspect.signature(getattr(optax.contrib, name)).parameters.values())
    for a, b in zip(ours, theirs):
        assert (a.name, a.kind) == (b.name, b.kind), name
        assert _same_default(a.default, b.default), f"{name}: {a.name}"
    assert all(p.kind == p.KEYWORD_ONLY and p.default is not p.empty
               for p in ours[len(theirs):]), name


@pytest.mark.parametrize("name", STATES)
def test_state_fields_are_optax(name):
    assert getattr(gradx.contrib, name)._fields == getattr(optax.contrib, name)._fields
    assert name in gradx.contrib.__all__
