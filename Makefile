# gradx: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
comma := ,

.PHONY: demo test bench convergence docs clean fuzz optax-tests

# Create the virtual environment if needed and install gradx with the given extras.
define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(1)]'
	touch $@
endef

$(VENV)/.installed-examples: pyproject.toml
	$(call install,examples)

$(VENV)/.installed-test: pyproject.toml
	$(call install,test$(comma)examples)
	touch $(VENV)/.installed-examples

$(VENV)/.installed-docs: pyproject.toml
	$(call install,docs)

demo: $(VENV)/.installed-examples
	$(PY) examples/quickstart.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadfile tests

# The API reference from the docstrings (mkdocs.yml); any warning fails the build.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Full sizes take a while (~100M params, optax compiles at 3000 leaves); BENCH_ARGS=--quick for a
# small run, which leaves benchmarks/RESULTS.md alone.
BENCH_ARGS ?=
bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/report.py $(if $(findstring --quick,$(BENCH_ARGS)),,--results-md benchmarks/RESULTS.md)

# Property-based differential tests against optax and torch with a large budget (make test runs
# a small one); figures in benchmarks/FUZZ.md (FUZZ_NOTE: the run's conditions), every mismatch in
# benchmarks/out/fuzz-results.json.
FUZZ_ARGS ?= --examples 5000 --torch-examples 500
fuzz: $(VENV)/.installed-test
	mkdir -p benchmarks/out
	$(PY) tests/differential.py $(FUZZ_ARGS) --out benchmarks/out/fuzz-results.json; \
	status=$$?; $(PY) benchmarks/fuzz_report.py --note "$(FUZZ_NOTE)" && exit $$status

# Optax 0.2.8's own test files (from the installed wheel) with gradx's names swapped in, then
# its docstring examples; prints the table and the failures that are not documented differences
# (tests/optax_suite/).
OPTAX_TESTS_ARGS ?= --jobs 2
optax-tests: $(VENV)/.installed-test
	$(PY) tests/optax_suite/run.py $(OPTAX_TESTS_ARGS); status=$$?; \
	$(PY) tests/optax_suite/docstrings.py $(OPTAX_DOCSTRINGS_ARGS) && exit $$status

# AdamW, Sophia, SOAP, Shampoo and Muon training a small character-level GPT from scratch, each
# with a learning-rate sweep: ~15 min on 2 CPU cores; CONVERGENCE_ARGS="--size gpu" on a GPU,
# "--size smoke" to check the pipeline (which leaves benchmarks/CONVERGENCE.md alone).
CONVERGENCE_ARGS ?=
convergence: $(VENV)/.installed-test
	$(PY) benchmarks/convergence.py $(if $(findstring smoke,$(CONVERGENCE_ARGS)),,--results-md benchmarks/CONVERGENCE.md) $(CONVERGENCE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info examples/out
