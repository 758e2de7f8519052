# Two commands for a newcomer: `make demo` submits the embedded digits reproduction to a local Ray head with
# `ray job submit` (tracked in MLflow) and draws the comparison report from its summary; `make test` runs the suite.
# Both create (or reuse) the virtual environment in $(VENV) and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The browser test drives Debian's Chromium (no browser download); `make test` installs it once when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo train-local test ui ablations bench clean lock

# requirements.lock: every version of a working install (`make lock` rewrites it from this venv after a pin change).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[platform,dev]'
	touch $(STAMP)

# After a pin change in pyproject.toml: install from the pins alone, then record what was installed.
lock:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[platform,dev]'
	{ sed -n '1,2p' requirements.lock; $(PY) -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m orchestration.demo experiments/demo_digits.yaml
	$(PY) -m dashboards.report --summary runs/demo_summary.json --out runs/report
	@echo "open the MLflow UI: make ui   (or python -m dashboards.ui; then http://127.0.0.1:5000)"

# The same demo in one process with the bare trainer (no Ray, no MLflow).
train-local: $(STAMP)
	$(PY) -m mupvit.train experiments/demo_digits.yaml --set train.resume=false --set train.out_dir=runs/demo_digits/$$(date +%Y%m%d-%H%M%S)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup

# The MLflow UI for ./mlflow.db on http://127.0.0.1:$(PORT) (Ctrl-C stops it).
PORT ?= 5000
ui: $(STAMP)
	$(PY) -m dashboards.ui --port $(PORT)

# The paper's ablations as Ray jobs, each run once: make ablations ARGS='--address http://<head>:8265 --set data.root=...'
ablations: $(STAMP)
	$(PY) -m orchestration.campaign experiments/ablations/ $(ARGS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_throughput.py --workers 2
	$(PY) benchmarks/ray_overhead.py

clean:
	rm -rf $(VENV) runs ray_results mlflow.db mlartifacts
