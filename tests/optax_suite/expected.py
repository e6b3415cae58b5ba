"""The one list of Optax tests that gradx fails on purpose: each a documented difference (a row
of README's "Where gradx differs from Optax, and why" table, and the docstring of the name).

Keys are ``fnmatch`` patterns of pytest node ids relative to the optax package
(``_src/alias_test.py::AliasTest::test_xxx*``); values say why gradx's behaviour differs.
"""

_OPTAX_ITSELF = "fails with Optax 0.2.8 itself on jax 0.10.2 (run.py --against-optax)"

EXPECTED_DIFFERENCES: dict[str, str] = {
    # Optax's own failures (jax-version noise), not differences of gradx's.
    "transforms/_clipping_test.py::ClippingTest::test_clip_by_block_rms": _OPTAX_ITSELF,
    "transforms/_freezing_test.py::FreezeTest::test_bad_structure_raises": _OPTAX_ITSELF,
    "transforms/_freezing_test.py::SelectiveTransformTest::test_selective_bad_structure":
        _OPTAX_ITSELF,
    # Documented differences (README table).
    "schedules/_inject_test.py::InjectHyperparamsTest::test_hyperparam_default_dtype_*":
        "inject_hyperparams keeps float hyperparameters float32 (float64 under x64) whatever "
        "the params' dtype; Optax casts them to the params' (README: inject_hyperparams)",
    "_src/transform_test.py::TransformTest::test_lion_invalid_mode_raises":
        "an unknown lion mode raises ValueError at construction; Optax's test builds it and "
        "expects the error at the first update (README: impossible hyperparameters)",
    "_src/utils_test.py::MultiNormalDiagFromLogScaleTest::test_init_successful_broadcast*":
        "the test checks isinstance against optax._src.utils.MultiNormalDiagFromLogScale, a "
        "class Optax does not make public (so it is not swapped); gradx.multi_normal returns "
        "gradx's own class of that name, with the same numbers (test_init_successful_* pass)",
    "contrib/_common_test.py::ContribTest::test_optimizers_can_be_wrapped_in_inject_hyperparams3":
        "contrib.adopt takes weight_decay, which Optax's lacks (README: contrib.adopt): "
        "inject_hyperparams injects its default 0.0 as an array, so the injected chain keeps "
        "the (zero) decay stage that plain adopt(weight_decay=0.0) leaves out; the updates are "
        "equal (tests/test_contrib_adopt.py), the states differ by that stage",
    # Docstring examples (tests/optax_suite/docstrings.py), keyed "doctest::<example>".
    "doctest::optax._src.alias.rprop": "rprop emits the current step's update; Optax's lags a "
                                       "step (README: rprop; upstream PR#1725)",
}
