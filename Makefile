# digitrec: `make train`, `make test`. Every target sets up the virtual environment on first use;
# inside an existing environment (a Kaggle kernel) use PYTHON=python and no venv is made.
SHELL := /bin/bash
VENV ?= .venv
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.installed
else
SETUP :=
endif
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

CONFIG ?= configs/default.yaml
# Make variables that become settings (empty ones are left to the config file)
SETTINGS := $(strip \
  $(if $(BS),BS=$(BS)) $(if $(ACCUM),accum=$(ACCUM)) $(if $(EPOCHS),epochs=$(EPOCHS)) \
  $(if $(FOLDS),folds=$(FOLDS)) $(if $(FOLD),fold=$(FOLD)) $(if $(SEED),seed=$(SEED)) \
  $(if $(DATA),data=$(DATA)) $(if $(NAME),name=$(NAME)) $(if $(LIMIT),limit=$(LIMIT)) \
  $(if $(MODEL),model=$(MODEL)) $(ARGS))
RUN_ARG := $(if $(RUN),--run $(RUN))
CLI := $(PYTHON) -m digitrec

.PHONY: help setup train predict test clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

setup: $(SETUP)  ## create the virtual environment (done by every target on first use)

train: $(SETUP)  ## train CONFIG over FOLDS stratified folds and write a submission (BS= ACCUM= EPOCHS= FOLD= SEED= DATA= NAME= LIMIT=)
	$(CLI) train --config $(CONFIG) $(SETTINGS)

predict: $(SETUP)  ## rebuild a run's submission from its saved weights (RUN=, default newest; TTA=1)
	$(CLI) predict $(RUN_ARG) $(if $(TTA),--tta)

test: $(SETUP)  ## run the test suite
	$(PYTHON) -m pytest -q tests

clean:  ## remove the virtual environment and caches (runs/ and submissions/ are kept)
	rm -rf $(VENV) input/.cache .pytest_cache
