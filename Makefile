# Two set-up commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use (PyTorch from this platform's pinned wheels, then hrdv2).
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.14.1 torchvision==0.29.1
IMAGE   ?=
ARGS    ?=
OUT     ?= hrdv2-out

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

## demo: featurise IMAGE (default: a sample micrograph bundled with scikit-image), write PCA + attention PNGs
demo: install
	$(VENV)/bin/hrdv2 features $(IMAGE) --out $(OUT) $(ARGS)

browser: install
	bash .ci/install-browser.sh $(VENV)

## test: the whole suite, real-browser tests included
test: install browser
	$(VENV)/bin/pytest -q $(ARGS)

clean:
	rm -rf $(VENV) $(OUT) test-artifacts
