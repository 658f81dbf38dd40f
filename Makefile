# bissl: every user-facing target installs the stack on demand (tools/install_env.sh), so on a
# fresh machine `make test` alone installs everything and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bissl-installed
PYTEST_ARGS ?=

.PHONY: install test demo demo-dense lint format bench-implicit bench-pretext device-check data-demo clean-venv

install: $(STAMP)

# Re-run the installer when the pins, the packaging or the installer change; it is idempotent,
# and reuses the cached mmcv wheel (~/.cache/bissl/wheels), so a re-install takes minutes.
$(STAMP): requirements/pins.txt requirements/detectron2.txt setup.py tools/install_env.sh
	bash tools/install_env.sh
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole pipeline on built-in data, ending in a report (bissl_dense/demo.py): at most 15 min on
# 2 CPU cores. DATA=digits uses scikit-learn's bundled handwritten digits instead of generated
# images. Rerun after an interruption to continue where it stopped.
DATA ?= synthetic
demo: install
	$(PY) -m bissl_dense.cli demo --data $(DATA)

# Detection (detectron2, tools/train_net.py) and segmentation (mmseg, tools/train.py) on
# generated VOC / Cityscapes data: a few BiSSL alternations and a short fine-tuning each.
demo-dense: install
	$(PY) -m bissl_dense.demo_dense

lint: install
	$(VENV)/bin/ruff check bissl_dense classification tools tests

format: install
	$(VENV)/bin/ruff format bissl_dense classification tools tests

bench-implicit: install
	$(PY) -m bissl_dense.benchmarks.implicit --json work_dirs/benchmarks/implicit.json

bench-pretext: install
	$(PY) -m bissl_dense.benchmarks.pretext

# The prepared GPU check (bissl_dense/benchmarks/device_check.py): at most 8 min on one GPU; every
# GPU figure and a few BiSSL steps of each task on CUDA, as one JSON (also printed to stdout).
device-check: install
	$(PY) -m bissl_dense.benchmarks.device_check --json work_dirs/benchmarks/device_check.json

# Generated data in the real on-disk layouts (VOC, Cityscapes, ImageFolder, unlabeled images).
data-demo: install
	$(PY) -m bissl_dense.datasets.synthetic --out data/demo/voc --kind voc --n 200
	$(PY) -m bissl_dense.datasets.synthetic --out data/demo/cityscapes --kind cityscapes --n 60
	$(PY) -m bissl_dense.datasets.synthetic --out data/demo/imagefolder --kind imagefolder --n 300
	$(PY) -m bissl_dense.datasets.synthetic --out data/demo/unlabeled --kind unlabeled --n 500

clean-venv:
	rm -rf $(VENV)
