# digitrec: `make train`, `make test`. Every target sets up the virtual environment on first use;
# inside an existing environment (a Kaggle kernel) use PYTHON=python and no venv is made.
SHELL := /bin/bash
# the checkout this Makefile lives in, so `make -f path/to/Makefile` works from any folder
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(ROOT)/.venv
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.installed
else
SETUP :=
endif
export PYTHONPATH := $(ROOT)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

CONFIG ?= $(ROOT)/configs/default.yaml
# Make variables that become settings (empty ones are left to the config file)
SETTINGS := $(strip \
  $(if $(BS),BS=$(BS)) $(if $(ACCUM),accum=$(ACCUM)) $(if $(EPOCHS),epochs=$(EPOCHS)) \
  $(if $(FOLDS),folds=$(FOLDS)) $(if $(FOLD),fold=$(FOLD)) $(if $(SEED),seed=$(SEED)) \
  $(if $(DATA),data=$(DATA)) $(if $(NAME),name=$(NAME)) $(if $(LIMIT),limit=$(LIMIT)) \
  $(if $(MODEL),model=$(MODEL)) $(if $(REFIT),refit=$(REFIT)) $(if $(BUDGET),budget=$(BUDGET)) $(ARGS))
RUN_ARG := $(if $(RUN),--run $(RUN))
CLI := $(PYTHON) -m digitrec
# NPROC=2: train under torchrun, one process per GPU (or CPU share); TORCHRUN_ARGS adds its other flags
# (--nnodes=2 --node-rank=0 --rdzv-endpoint=host:29500 ... for several machines)
TRAIN_CLI := $(if $(NPROC),$(PYTHON) -m torch.distributed.run --nproc-per-node=$(NPROC) $(TORCHRUN_ARGS) -m digitrec,$(CLI))

.PHONY: help setup lock train predict evaluate compare runs sweep bench test download submit scores kernel kernel-push kernel-output clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

# the Python the venv is made from (make setup BASE_PYTHON=python3.12 picks another); the pins in constraints.txt
# (numpy, scipy, pandas, ...) need 3.11 or newer, so an older one stops here in one line, before pip resolves
BASE_PYTHON ?= python3
MIN_PYTHON := 3.11
CHECK_PYTHON = version=$$($(BASE_PYTHON) -c 'import sys; print(*sys.version_info[:2], sep=".")' 2>/dev/null); \
	printf '$(MIN_PYTHON)\n%s\n' "$$version" | sort -V -C || { echo "error: $(BASE_PYTHON) is Python \
	$${version:-(not found)}; digitrec needs Python >= $(MIN_PYTHON): install one and run make setup \
	BASE_PYTHON=python$(MIN_PYTHON)" >&2; exit 2; }

# the pinned versions the tests pass with; PIP_ARGS adds pip options, e.g. PyTorch's CPU-only index:
# make setup PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" (README, Install)
$(VENV)/.installed: $(ROOT)/pyproject.toml $(ROOT)/constraints.txt
	@$(CHECK_PYTHON)
	$(BASE_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c $(ROOT)/constraints.txt $(PIP_ARGS) -e '$(ROOT)[dev]'
	touch $@

setup: $(SETUP)  ## create the virtual environment with the pinned versions (done by every target on first use)

lock:  ## renew constraints.txt: the newest releases pyproject.toml allows, in a fresh venv (then run make test)
	@$(CHECK_PYTHON)
	rm -rf $(ROOT)/.venv-lock
	$(BASE_PYTHON) -m venv $(ROOT)/.venv-lock
	$(ROOT)/.venv-lock/bin/pip install --quiet --upgrade pip
	$(ROOT)/.venv-lock/bin/pip install --quiet $(PIP_ARGS) -e '$(ROOT)[dev]'
	{ sed -n '1,2p' $(ROOT)/constraints.txt; $(ROOT)/.venv-lock/bin/pip freeze --exclude-editable; } > $(ROOT)/constraints.txt.new
	mv $(ROOT)/constraints.txt.new $(ROOT)/constraints.txt
	rm -rf $(ROOT)/.venv-lock

train: $(SETUP)  ## train CONFIG over FOLDS stratified folds and write a submission (BUDGET=30m BS= ACCUM= EPOCHS= FOLD= SEED= DATA= NAME= LIMIT= REFIT= NPROC=)
	$(TRAIN_CLI) train --config $(CONFIG) $(SETTINGS)

predict: $(SETUP)  ## predict again from a run's weights into RUN/predict-tta<0|1>/ and a submission of its own (RUN=, default newest; TTA=1 or TTA=0)
	$(CLI) predict $(strip $(RUN_ARG) $(if $(TTA),tta=$(TTA)))

evaluate: $(SETUP)  ## cost and accuracy of a run: evaluation.json, table, confusion and mistakes PNGs (RUN=)
	$(CLI) evaluate $(RUN_ARG) $(ARGS)

compare: $(SETUP)  ## is run B more accurate than run A? McNemar's paired test on their out-of-fold rows (A= B=)
	$(CLI) compare $(if $(A),a=$(A)) $(if $(B),b=$(B))

runs: $(SETUP)  ## a table of the runs under runs/, newest first (ARGS="csv=1" for CSV)
	$(CLI) runs $(ARGS)

sweep: $(SETUP)  ## a study: STUDY=batch MODEL= BATCH_SIZES="..." | STUDY=accum or norm BS= ACCUMS="..." (ARMS="rule fixed" SEEDS="42 43" EPOCHS= LIMIT= FOLDS= OUT=)
	$(CLI) sweep $(strip $(if $(STUDY),study=$(STUDY)) $(if $(MODEL),model=$(MODEL)) \
	  $(if $(BATCH_SIZES),batch_sizes="$(BATCH_SIZES)") $(if $(ACCUMS),accums="$(ACCUMS)") $(if $(BS),bs=$(BS)) \
	  $(if $(ARMS),arms="$(ARMS)") $(if $(SEEDS),seeds="$(SEEDS)") \
	  $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(LIMIT),limit=$(LIMIT)) $(if $(FOLDS),folds=$(FOLDS)) \
	  $(if $(DATA),data=$(DATA)) $(if $(OUT),out=$(OUT)) $(ARGS))

bench: $(SETUP)  ## throughput vs the conventional per-sample path and the FLOP limit (DATA=; ARGS="record=1"); JSON last line
	$(CLI) bench --config $(CONFIG) results=$(ROOT)/benchmarks/results.json $(if $(DATA),data=$(DATA)) $(ARGS)

download: $(SETUP)  ## kaggle competitions download -c digit-recognizer into input/, unzip, verify
	$(CLI) download

submit: $(SETUP)  ## upload a submission (SUB=, default newest; MSG=; DRY_RUN=1 shows what would be sent)
	$(CLI) submit $(strip $(if $(SUB),sub=$(SUB)) $(if $(MSG),msg="$(MSG)") $(if $(DRY_RUN),dry_run=$(DRY_RUN)))

scores: $(SETUP)  ## this account's submissions and public scores, beside the local ledger
	$(CLI) scores

kernel: $(SETUP)  ## build kernel/: metadata + one script carrying the package (CONFIG=; BUDGET=8h; ACCEL=NvidiaTeslaT4 (default), NvidiaL4, cpu, ...)
	$(CLI) kernel --config $(CONFIG) $(if $(ACCEL),accel=$(ACCEL)) $(if $(BUDGET),budget=$(BUDGET)) $(ARGS)

kernel-push: $(SETUP)  ## push kernel/ with kaggle kernels push
	$(CLI) kernel-push

kernel-output: $(SETUP)  ## fetch the kernel's output (its submission.csv) into kernel/output/
	$(CLI) kernel-output

test: $(SETUP)  ## run the test suite
	$(PYTHON) -m pytest -q $(ROOT)/tests

clean:  ## remove the virtual environment and caches (runs/ and submissions/ are kept)
	rm -rf $(VENV) $(ROOT)/input/.cache .pytest_cache
