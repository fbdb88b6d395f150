# `make test` and `make demo` work on a fresh clone: the first run creates .venv with the pinned
# stack from requirements.lock (torch 2.14.1 + torchvision 0.29.1, ray 2.60.0, optuna 5.0.0, ...).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test test-slow test-all test-gpu demo screenshots lint bench precision-check clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# The suite in two tiers. `make test` (under 10 minutes on 2 cores): every unit and in-process
# test, the fault matrix, the browser tests, and the Ray end-to-end tests that catch what they are
# named after (DDP averaging, a resume from the checkpoint's weights, TPE's proposals, a real grid
# sweep, a stopped Ray run). `make test-slow` (~25 minutes): the tests marked `slow`, minutes each of
# Ray end to end (whole sweeps with ASHA, Ctrl-C and resume, replication; a killed worker; several
# nodes; Ray Jobs; S3 storage). CI (.ci/run) runs both; `make test-all` is both in one pytest run.
test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=20 -m "not slow"

test-slow: venv
	$(BIN)/python -m pytest -q -ra --durations=20 -m slow

test-all: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=20

# The tests that need a CUDA GPU (nccl DDP, SyncBatchNorm, fractional-GPU trials, the CUDA RNG in
# checkpoints): a few minutes on one GPU. `make test` skips them where no GPU is visible.
test-gpu: venv
	$(BIN)/python -m pytest -q -ra -m gpu

# The demo sweep (glimpses x feedback on digits, offline) on a local Ray, then its report.
# Run again, it resumes the sweep in runs/demo (finished trials are kept) and rewrites the report.
demo: venv
	$(BIN)/rsam-dist sweep sweeps/demo.yaml $(if $(wildcard runs/demo/sweep.yaml),--resume)
	$(BIN)/rsam-dist report runs/demo
	@echo "See it: tensorboard --logdir runs/demo   and open runs/demo/report.html in a browser"

# The README's screenshots (docs/*.png) of the demo sweep's TensorBoard and report, in headless
# Chromium (apt-get install chromium chromium-driver): run `make demo` first.
screenshots: venv
	$(BIN)/python docs/screenshots.py runs/demo docs

# rsam-dist against the author-style loop, in-process and through Ray, and Ray Train's own floor,
# in one table (~11 minutes on 2 cores): runs/bench/bench.md and .json. BENCH_ARGS="--skip-ray" for
# the in-process arms only, "--repeats 3 --ray-repeats 2" to trade time for steadier medians. The
# Ray arms hold RAY_LOCK while they run, so that they never meet another local Ray on this machine.
RAY_LOCK ?= /tmp/rsam-ray.lock
bench: venv
	$(BIN)/python benchmarks/bench.py --ray-lock $(RAY_LOCK) $(BENCH_ARGS)

# Final digits accuracy of `auto` precision (and bf16, asked for explicitly) against fp32, 3 seeds.
precision-check: venv
	$(BIN)/python benchmarks/precision_check.py --precisions auto bf16 $(PRECISION_ARGS)

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
