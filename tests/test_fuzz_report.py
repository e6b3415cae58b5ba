"""``make fuzz``'s pipeline on a tiny budget: tests/differential.py's ``fuzz`` writes the figures
and ``benchmarks/fuzz_report.py`` turns them into FUZZ.md, listing unexplained mismatches."""

import json
import pathlib
import sys

import differential

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_report  # noqa: E402


def test_fuzz_figures_become_the_record(tmp_path):
    out = tmp_path / "fuzz-results.json"
    result = differential.fuzz(3, 1, True, str(out))
    assert (result["optax_examples"], result["torch_examples"]) == (3, 1)
    assert json.loads(out.read_text())["optax_examples"] == 3
    result["found"].append({"case": "Case(x)", "problem": "leaf 'w': 1.0 vs 2.0",
                            "explanation": ""})
    result.update(unexplained=1, examples_with_unexplained=1, explained={"a documented one": 4})
    out.write_text(json.dumps(result))
    fuzz_report.main([str(out), "--md", str(tmp_path / "FUZZ.md"), "--note", "on a laptop"])
    text = (tmp_path / "FUZZ.md").read_text()
    assert "Optax examples run: **3**, torch_compat examples run: **1**" in text
    assert "on a laptop" in text and "| a documented one | 4 |" in text
    assert "- unexplained: **1** (in 1 examples)" in text
    assert "## Unexplained" in text and "`leaf 'w': 1.0 vs 2.0` in `Case(x)`" in text


def test_recheck_runs_the_unexplained_cases_again(tmp_path):
    """A case make fuzz recorded as unexplained (Optax's lookahead reset blend turns a boolean
    field int64 under x64; the explanation said int32 only) is explained after a recheck; a
    mismatch explained by a current reason is kept as it is (not run again)."""
    case = ("Case(tree=5, dtype='float64', seed=189, fills=('mixed',), tx=('lookahead', ('opt', "
            "'optimistic_adam_v2', (('learning_rate', 0.3), ('alpha', 1.0), ('beta', 0.3), "
            "('b1', 0.5))), 1, 0.5, True), lookahead=True)")
    out = tmp_path / "fuzz-results.json"
    kept = {"case": "Case(y)", "problem": "p", "explanation": differential.EXPLANATIONS[0][0]}
    differential._figures([kept, {"case": case, "problem": "layout", "explanation": ""}],
                          {"optax": 7, "torch": 0}, 12.0, 9, str(out))
    result = differential.recheck(str(out))
    assert result["unexplained"] == 0 and result["optax_examples"] == 7
    assert kept in result["found"]
    assert any("int64 under x64" in item["explanation"] and item["case"] == case
               for item in result["found"])
