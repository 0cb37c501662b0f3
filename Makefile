# Two commands do all the set-up from a fresh clone: `make test` and `make demo`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The torch build to install. These versions lie on the project's build machines' disk;
# on a GPU box set e.g. TORCH="torch torchvision" to take what pip resolves for your CUDA.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
DATASET ?= imagenet
ARGS    ?=

.PHONY: install test demo extract splits negatives reproduce ablation fig3 clean

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

# The paper's tables from one command each (iim grid, README "iim grid"); DATASET=demo runs
# offline on a CPU. Seeds and shots: SEEDS=1,2,3 SHOTS=4. Per benchmark: the model, the negatives C_n, the
# train k and its grids. The defaults come from the recipes (src/iim/recipes/*.toml, their only copy):
# the demo's (64 patches, 20 classes) for DATASET=demo, the paper's otherwise; read when first used
# (after install) by `python -m iim.recipes get RECIPE KEY`.
recipe   = $(or $(shell $(BIN)/python -m iim.recipes get $(1) $(2)),$(error recipe $(1) $(2): no value (make install first)))
SEEDS   ?= 1,2,3
SHOTS   ?= 4
ifeq ($(DATASET),demo)
EXTRACT_ARGS ?= --model $(call recipe,demo,model) --pretrained $(call recipe,demo,pretrained) --views $(call recipe,demo,views)
NEG     ?= $(call recipe,demo,n_neg)
TRAIN_K ?= $(call recipe,demo,k)
FIXED   ?= --grid batch_size=$(call recipe,demo,batch_size)
NEG_GRID ?= 0,5,10,20,40
K_GRID   ?= 2,4,8,16
TEST_K_GRID ?= 1,2,4,8,16,32
VOCAB   ?= src/iim/demo/vocab
GROUPS  ?= $(call recipe,demo,neg_groups)
else
EXTRACT_ARGS ?=
NEG     ?= $(call recipe,paper,train.n_neg)
TRAIN_K ?= $(call recipe,paper,train.k)
FIXED   ?=
NEG_GRID ?= 0,100,300,500
K_GRID   ?= 10,25,50,75
TEST_K_GRID ?= 1,5,10,20,50,100,200
VOCAB   ?= wordnet
GROUPS  ?=
endif
CACHE   := cache/$(DATASET)
GRID     = $(BIN)/iim grid --cache $(CACHE) --grid shots=$(SHOTS) --seed $(SEEDS) $(FIXED)

splits: install
	$(BIN)/iim extract --benchmark $(DATASET) --shots $(SHOTS) --seed $(SEEDS) $(EXTRACT_ARGS) --out $(CACHE)

# Negative labels mined from a vocabulary (SPEC §10) for the cache's classes: VOCAB=wordnet (nltk's data) or
# a folder of noun.*.txt / adj.*.txt (the demo's: src/iim/demo/vocab). NegLabel's GROUPS: iim score's
# --groups default (NegLabel's ImageNet setting) unless given; the demo recipe's 1 (ungrouped) on the demo,
# whose 28 mined negatives cannot make 100 groups.
NEGS    := neg/$(DATASET)
NEG_SCORE = --negatives $(NEGS)$(if $(GROUPS), --groups $(GROUPS))
negatives: splits
	$(BIN)/iim negatives --cache $(CACHE) --vocab $(VOCAB) --out $(NEGS) --overwrite

# Table 1/2 rows: 0-shot MCM / GL-MCM / R-MCM* / S-MCM* (results/), IIM (S-MCM) and IIM* (no negatives,
# S-MCM*), mean ± std over SEEDS (sweeps/<dataset>-reproduce-shots<shots>/report.md); the 0-shot peers NegLabel,
# CSP, AdaNeg and S-MCM with mined negatives beside their papers' reported numbers (results/<dataset>-0shot-neg)
reproduce: negatives
	$(BIN)/iim score --zero-shot --cache $(CACHE) --out results/$(DATASET)-0shot --k $(TRAIN_K) --no-plots
	$(BIN)/iim score --zero-shot --cache $(CACHE) $(NEG_SCORE) --out results/$(DATASET)-0shot-neg --k $(TRAIN_K) --no-plots
	$(BIN)/iim report results/$(DATASET)-0shot-neg --out results/$(DATASET)-0shot-neg
	$(GRID) --grid n_neg=0,$(NEG) --grid k=$(TRAIN_K) --k $(TRAIN_K) --out sweeps/$(DATASET)-reproduce-shots$(SHOTS) $(ARGS)

# Fig. 3: pairwise cosines and t-SNE of the learned ID prototypes, ImageNet-500-Easy against -Hard (iim
# prototypes). Default runs: seed 1's IIM point of 'make reproduce DATASET=imagenet500-easy' / '-hard'.
EASY    ?= $(firstword $(wildcard sweeps/imagenet500-easy-reproduce-shots$(SHOTS)/points/shots$(SHOTS)-seed1*-n_neg$(NEG)*))
HARD    ?= $(firstword $(wildcard sweeps/imagenet500-hard-reproduce-shots$(SHOTS)/points/shots$(SHOTS)-seed1*-n_neg$(NEG)*))
fig3: install
	@test -n "$(EASY)" -a -n "$(HARD)" || { echo "make fig3: no runs; give EASY=RUN HARD=RUN or run 'make reproduce \
	DATASET=imagenet500-easy' and 'make reproduce DATASET=imagenet500-hard' first (SHOTS=$(SHOTS))" >&2; exit 2; }
	$(BIN)/iim prototypes $(EASY) $(HARD) --label ImageNet-500-Easy --label ImageNet-500-Hard \
	  --out results/fig3-shots$(SHOTS) $(ARGS)

# Table 3 (each loss term, hard-negative mining), Fig. 4 (C_n, lambda_neg, lambda_div, alpha), Fig. 5
# (train k x test k): one grid folder each (iim grid) under sweeps/<dataset>-*; which side of IIM helps: R-MCM / S-MCM
# with hand-written or learned ID prototypes x none / learned / mined / learned + mined negatives
# (sweeps/<dataset>-sources/summary.md, mean ± std over SEEDS)
SOURCES := sweeps/$(DATASET)-sources
ablation: negatives
	$(GRID) --grid n_neg=$(NEG) --grid k=$(TRAIN_K) --grid lambda_neg=0,5 --grid lambda_div=0,0.5 \
	  --grid hard_negative_mining=on,off --k $(TRAIN_K) --out sweeps/$(DATASET)-table3 $(ARGS)
	$(GRID) --grid n_neg=$(NEG_GRID) --grid k=$(TRAIN_K) --k $(TRAIN_K) --alpha 0:2:0.25 \
	  --out sweeps/$(DATASET)-n_neg $(ARGS)
	$(GRID) --grid n_neg=$(NEG) --grid k=$(TRAIN_K) --grid lambda_neg=0,1,2.5,5,10 --k $(TRAIN_K) \
	  --out sweeps/$(DATASET)-lambda_neg $(ARGS)
	$(GRID) --grid n_neg=$(NEG) --grid k=$(TRAIN_K) --grid lambda_div=0,0.25,0.5,1 --k $(TRAIN_K) \
	  --out sweeps/$(DATASET)-lambda_div $(ARGS)
	$(GRID) --grid n_neg=$(NEG) --grid k=$(K_GRID) --k $(TEST_K_GRID) --out sweeps/$(DATASET)-k $(ARGS)
	$(GRID) --grid n_neg=$(NEG) --grid k=$(TRAIN_K) --k $(TRAIN_K) --out $(SOURCES) $(ARGS)
	for p in $(SOURCES)/points/*/; do $(BIN)/iim score --run $$p $(NEG_SCORE) --k $(TRAIN_K) --no-plots \
	  --no-knn --out $(SOURCES)/scored/$$(basename $$p) || exit 1; done
	$(BIN)/iim report $(SOURCES)/scored/* --out $(SOURCES)

clean:
	rm -rf $(VENV) .pytest_cache
