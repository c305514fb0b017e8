# The two commands a new user needs:
#   make run    train the Task API example locally on the built-in tiny model (no cluster, GPU or network)
#   make test   run the test suite (unit + integration; e2e and gpu tests skip without kind / CUDA)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TOOLS   := .tools/bin

.PHONY: run test soak lint crd lock tools venv tiny-base

# The project itself installs with -qq: setuptools notes every editable install ("folders with the same
# name as your package may take precedence"), which pip shows as a warning a user cannot act on.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel here; anything unpinned would pull CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps -r requirements.lock
	$(BIN)/pip install -qq --no-deps -e .
	touch $@

tools: $(TOOLS)/.installed
$(TOOLS)/.installed: scripts/install-tools
	scripts/install-tools $(TOOLS)
	touch $@

run: venv
	$(BIN)/tooltune run examples/task-api/tooltunejob.yaml

test: venv tools
	PATH="$(CURDIR)/$(TOOLS):$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

# The chaos soak at full size (the suite runs it with 4 jobs): 50 tiny-model jobs while the operator and
# random trainer pods are killed; prints jobs, kills, duplicate Jobs and steps lost per kill.
soak: venv
	TOOLTUNE_SOAK_JOBS=$${TOOLTUNE_SOAK_JOBS:-50} $(BIN)/pytest -s tests/integration/test_soak.py

lint: venv tools
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

crd: venv
	$(BIN)/python -m tooltune_api.crd > manifests/crds/tooltunejobs.tooltune.dev.yaml
	cp manifests/crds/tooltunejobs.tooltune.dev.yaml charts/tooltune/crds/

lock: venv
	scripts/lock > requirements.lock

# Rebuild models/tiny-tool-base, the pre-trained tiny base `make run` fine-tunes (seeded; see the script).
tiny-base: venv
	scripts/build-tiny-base
