# `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
comma := ,

.DEFAULT_GOAL := help

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,sweep]'
	touch $@

.PHONY: help install install-bench run test test-slow bench docs-figures docs-plots results results-heldout results-general \
	results-sb3 clean

help: ## show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-16s %s\n", $$1, $$2}'

install: $(BIN)/.installed ## create .venv and install the pinned dependencies

run: install ## train the default job (pass overrides with ARGS="env=hopper optimizer.delta=0.02")
	$(BIN)/python launch.py $(ARGS)

test: install ## run the test suite (under 5 minutes on 2 cores)
	$(BIN)/python -m pytest -m "not slow"

test-slow: install ## run only the slow end-to-end tests (launchers, kill -9 resume, W&B online fallback)
	$(BIN)/python -m pytest -m slow

install-bench: install ## add sb3-contrib, the baseline `make bench` compares against
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'

bench: install ## speed: env steps/s end to end, update share, peak memory, vs the raw simulator and sb3-contrib
	$(BIN)/python -m trpo.bench $(ARGS)

DOCS_RUNS := outputs/docs
COMPARE := $(BIN)/python -m trpo.compare
docs-figures: install ## rerun every experiment of docs/trpo.md, then redraw its figures (about 2 hours on 2 cores)
	$(BIN)/python launch.py -m experiment=collapse logger.mode=disabled hydra.sweep.dir=$(DOCS_RUNS)/collapse
	$(BIN)/python launch.py -m experiment=line_search logger.mode=disabled hydra.sweep.dir=$(DOCS_RUNS)/line_search
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.delta=0.005,0.01,0.02,0.05 hydra.sweep.dir=$(DOCS_RUNS)/delta
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.lam=0.9,0.97,1.0 hydra.sweep.dir=$(DOCS_RUNS)/lam
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.damping_coeff=0.01,0.1,1.0 hydra.sweep.dir=$(DOCS_RUNS)/damping_coeff
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.cg_iters=2,10,25 hydra.sweep.dir=$(DOCS_RUNS)/cg_iters
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.backtrack_iters=1,3,10 optimizer.delta=0.05 hydra.sweep.dir=$(DOCS_RUNS)/backtrack_iters
	$(BIN)/python launch.py -m experiment=hparams logger.mode=disabled optimizer.backtrack_coeff=0.5,0.8,0.95 optimizer.delta=0.05 hydra.sweep.dir=$(DOCS_RUNS)/backtrack_coeff
	$(MAKE) docs-plots

docs-plots: install ## redraw docs/figures/ from the runs under outputs/docs/
	$(COMPARE) $(DOCS_RUNS)/collapse --metrics KL,Time --panels KL --out-dir docs/figures --name collapse --title "TRPO against vanilla policy gradient, Hopper-v5"
	$(COMPARE) $(DOCS_RUNS)/line_search --metrics KL,KLExceeded,SurrogateWorse,BacktrackIters,Time --panels KL,BacktrackIters --out-dir docs/figures --name line_search --title "TRPO (line search) against NPG (none), Hopper-v5"
	for key in delta lam damping_coeff cg_iters backtrack_iters backtrack_coeff; do \
	  $(COMPARE) $(DOCS_RUNS)/$$key --metrics KL,BacktrackIters,Time --panels KL --out-dir docs/figures --name $$key --title "TRPO: $$key, Hopper-v5" || exit 1; \
	done

# Results runs also evaluate every EVAL_FREQ epochs: every 30,720 steps at the presets' 2,048-step epochs, about
# Tianshou's 30,000-step test interval, so their best during training compares with Tianshou's table.
EVAL_FREQ ?= 15

# $(call train_presets,SEEDS,DIR): the 1M-step task presets on SEEDS, two jobs at a time, into DIR/<task>/<seed>.
# Rerunning continues: a job whose dir holds a checkpoint resumes from it (a finished one is not trained again).
train_presets = for task in halfcheetah hopper walker2d; do \
	  $(BIN)/python launch.py -m experiment=$$task seed=$(1) \
	    hydra/launcher=parallel hydra.launcher.n_jobs=2 overlap_value_fit=false logger.mode=disabled \
	    eval.freq=$(EVAL_FREQ) hydra.sweep.dir=$(2)/$$task 'hydra.sweep.subdir=$${seed}' || exit 1; \
	done

results: install ## train the halfcheetah, hopper and walker2d presets on seeds 0,1,2 (2 jobs at a time), then write docs/results.md
	$(call train_presets,0$(comma)1$(comma)2,outputs/results)
	$(BIN)/python -m trpo.results

# Six more seeds, as many as make results-sb3 sets beside them: about 25 minutes (2-3.5 minutes a run, 2026-11-28).
HELDOUT_SEEDS ?= 3,4,5,6,7,8
results-heldout: install ## the presets on seeds they were not chosen on (HELDOUT_SEEDS), then docs/results.md
	$(call train_presets,$(HELDOUT_SEEDS),outputs/results/heldout)
	$(BIN)/python -m trpo.results

# Every Gymnasium MuJoCo v5 task: one to two hours on 2 cores for three seeds (the runs of 2026-11-28 13:38-14:42 UTC,
# two at a time, took 86-673 s each, 128 minutes in all; those of 2026-11-27 250 minutes).
GENERAL_TASKS ?= ant,halfcheetah,hopper,humanoid,humanoidstandup,inverted_double_pendulum,inverted_pendulum,pusher,reacher,swimmer,walker2d
GENERAL_SEEDS ?= 0,1,2
results-general: install ## train the general preset (experiment=mujoco) 1M steps on GENERAL_TASKS, then write docs/results.md
	$(BIN)/python launch.py -m experiment=mujoco env=$(GENERAL_TASKS) seed=$(GENERAL_SEEDS) \
	  hydra/launcher=parallel hydra.launcher.n_jobs=2 overlap_value_fit=false logger.mode=disabled \
	  eval.freq=$(EVAL_FREQ) hydra.sweep.dir=outputs/results/general 'hydra.sweep.subdir=$${env.id}/$${seed}'
	$(BIN)/python -m trpo.results

# The first anchor of docs/results.md on more seeds: about 6 minutes a run, two at a time (runs of 2026-11-28).
SB3_SEEDS ?= 0,1,2,3,4,5,6,7,8
results-sb3: install-bench ## sb3-contrib's TRPO at rl-zoo's settings, 1M steps on SB3_SEEDS x 3 tasks, then docs/results.md
	$(BIN)/python -m trpo.baseline --seeds $(SB3_SEEDS) --jobs 2
	$(BIN)/python -m trpo.results

clean: ## remove run outputs (keeps .venv)
	rm -rf outputs/runs outputs/sweeps
