# Two commands do all the set-up from a fresh clone: `make test` and `make demo`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The torch build to install. These versions lie on the project's build machines' disk;
# on a GPU box set e.g. TORCH="torch torchvision" to take what pip resolves for your CUDA.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
DATASET ?= imagenet
ARGS    ?=

.PHONY: install test demo extract clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/iim demo $(ARGS)

# make extract DATASET=imagenet [ARGS="--data-root /data --shots 16 --seed 1"]
extract: install
	$(BIN)/iim extract --benchmark $(DATASET) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
