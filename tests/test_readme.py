"""The README's Python examples run and do what their comments say."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block(title):
    text = README.read_text()
    return re.search(rf"## {re.escape(title)}\n\n```python\n(.*?)```", text, re.S).group(1)


def test_first_example_reads_and_sets_hyperparameters(capsys):
    namespace = {}
    exec(_block("A 30-second example"), namespace)  # noqa: S102 - our own README
    values = namespace["gradx"].read_state(namespace["state"])
    np.testing.assert_allclose(values["learning_rate"], 1e-3, rtol=1e-6)  # schedule(0)
    assert float(values["weight_decay"]) == 0.0  # set after the step
    assert float(values["grad_norm"]) > 1.0  # measured before clipping at 1.0
    # Adam's first step is lr·(sign(g) + wd·p): every gradient is positive, w = 1 (6 entries),
    # b = 0 (2 entries), so ‖u‖ = 1e-3·√(6·1.1² + 2).
    np.testing.assert_allclose(values["update_norm"], 1e-3 * np.sqrt(6 * 1.1 ** 2 + 2), rtol=1e-5)
    assert "learning_rate" in capsys.readouterr().out
