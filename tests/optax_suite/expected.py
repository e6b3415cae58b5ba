"""The one list of Optax tests that gradx fails on purpose: each a documented difference (a row
of README's "Where gradx differs from Optax, and why" table, and the docstring of the name).

Keys are ``fnmatch`` patterns of pytest node ids relative to the optax package
(``_src/alias_test.py::AliasTest::test_xxx*``); values say why gradx's behaviour differs.
"""

EXPECTED_DIFFERENCES: dict[str, str] = {
    # Docstring examples (tests/optax_suite/docstrings.py), keyed "doctest::<example>".
    "doctest::optax._src.alias.rprop": "rprop emits the current step's update; Optax's lags a "
                                       "step (README: rprop; upstream PR#1725)",
}
