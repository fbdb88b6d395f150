# `make test` and `make demo` work on a fresh clone: the first run creates .venv with the pinned
# stack from requirements.lock (torch 2.14.1 + torchvision 0.29.1, ray 2.60.0, optuna 5.0.0, ...).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test demo lint bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

# The demo sweep (glimpses x feedback on digits, offline) on a local Ray, then its report.
# Run again, it resumes the sweep in runs/demo (finished trials are kept) and rewrites the report.
demo: venv
	$(BIN)/rsam-dist sweep sweeps/demo.yaml $(if $(wildcard runs/demo/sweep.yaml),--resume)
	$(BIN)/rsam-dist report runs/demo
	@echo "See it: tensorboard --logdir runs/demo   and open runs/demo/report.html in a browser"

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
