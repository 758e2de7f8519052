# Two commands for a newcomer: `make demo` trains on the embedded digits data, `make test` runs the suite.
# Both create (or reuse) the virtual environment in $(VENV) and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mupvit.train experiments/demo_digits.yaml --set train.resume=false --set train.out_dir=runs/demo_digits/$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_throughput.py --workers 2

clean:
	rm -rf $(VENV) runs
