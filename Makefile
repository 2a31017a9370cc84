# fedw2v: `make demo` runs the whole pipeline on the embedded synthetic corpus; `make test` runs the suite.
# Both install what they need first (idempotent: a second run with nothing changed takes seconds).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.fedw2v-installed
DEMO   ?= demo
# torch and torchaudio come from pip (CPU/GPU wheels on the local disk or PyPI), pinned here and in the constraints.
TORCH  := torch==2.14.1 torchaudio==2.11.0

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1

# The demo: federated fine-tuning of the packaged `tiny-pretrained` model (make pretrained) on a 10-voice synthetic
# corpus whose voices the model never heard: its 6 train speakers are the clients, its 2 test speakers (never
# clients) score the global model every round. Everything is written under $(DEMO)/ (the run is $(DEMO)/run,
# removed and redone by each `make demo`). The voices are espeak-ng only: flite speaks so differently from the
# pretraining voices that a few rounds cannot adapt to it.
DEMO_VOICES  = EspeakUsF3,EspeakScotland,EspeakUsM3,EspeakCaribbean,EspeakUsM2,EspeakUsF5,EspeakUsF1,EspeakGbF4,EspeakUsM4,EspeakUsM7
DEMO_RUN     = $(DEMO)/run
DEMO_MODEL  ?= tiny-pretrained
DEMO_ROUNDS ?= 6
DEMO_FL      = --model $(DEMO_MODEL) --recipe paper --batch-size 8 --lr-encoder 1e-3 --lr-head 1e-3 --no-newbob \
               --rounds $(DEMO_ROUNDS) --clients-per-round 4 --local-epochs 4 --cpus-per-client 1 --gpus-per-client 0 \
               --eval-every 1 --seed 0 --footprint-rounds 2,4,6
PRETRAINED   = fedw2v/data/tiny-pretrained

.PHONY: install system-deps test demo pretrained bench clean help

help:
	@echo "make demo        install, then the whole pipeline on a synthetic corpus in ./$(DEMO): synth, prepare,"
	@echo "                 partition, simulate, lm build, evaluate, transcribe, participation, footprint"
	@echo "make test        install, then run the test suite"
	@echo "make pretrained  install, then rebuild $(PRETRAINED), the demo's starting model (~20 min)"
	@echo "make bench       install, then run the benchmarks (figures go to BENCHMARKS.md by hand)"
	@echo "make install     create .venv with pinned versions and the system packages"

install: system-deps $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c requirements/constraints.txt $(TORCH)
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	@touch $@

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider

# RAY_worker_niceness=0: Ray starts its workers (the clients) at nice 15, which starves them on a machine that
# runs anything else; at 0 they get their share of the cores.
demo: install
	@start=$$(date +%s); set -e; export RAY_worker_niceness=0; \
	$(VENV)/bin/fedw2v synth $(DEMO)/corpus --voices $(DEMO_VOICES) --force; \
	$(VENV)/bin/fedw2v prepare $(DEMO)/corpus -o $(DEMO)/manifest.parquet; \
	$(VENV)/bin/fedw2v partition $(DEMO)/manifest.parquet -o $(DEMO)/clients.parquet --plot $(DEMO)/clients.png \
	    --holdout-minutes 0.5 --holdout-min-minutes 1; \
	rm -rf $(DEMO_RUN); \
	echo "== federated fine-tuning of $(DEMO_MODEL): $(DEMO_ROUNDS) rounds"; \
	$(VENV)/bin/fedw2v simulate $(DEMO)/clients.parquet --run-dir $(DEMO_RUN) $(DEMO_FL); \
	echo "== a 4-gram LM and a lexicon from the train split's text (the clients' sentences; never dev or test)"; \
	$(VENV)/bin/fedw2v lm build $(DEMO)/clients.parquet -o $(DEMO)/lm --model $(DEMO_RUN); \
	echo "== the final global model on the held-out test speakers: greedy, and beam search with the LM"; \
	$(VENV)/bin/fedw2v evaluate $(DEMO_RUN) --manifest $(DEMO)/clients.parquet --split test --by speaker \
	    --decoder beam --lm $(DEMO)/lm; \
	talk=$$(ls $(DEMO)/corpus/legacy/test/sph/*.sph | head -n 1); \
	stm=$(DEMO)/corpus/legacy/test/stm/$$(basename $${talk%.sph}).stm; \
	end=$$(grep -v ignore_time_segment_in_scoring $$stm | sed -n 3p | cut -d' ' -f5); \
	$(PY) -c "import soundfile as sf, sys; a, r = sf.read(sys.argv[1]); sf.write(sys.argv[2], a[: int(float(sys.argv[3]) * r)], r)" \
	    $$talk $(DEMO)/sample.wav $$end; \
	echo "== transcription of $(DEMO)/sample.wav, the first $$end s of the held-out test talk $$talk: greedy, beam + LM"; \
	$(VENV)/bin/fedw2v transcribe $(DEMO)/sample.wav --model $(DEMO_RUN); \
	$(VENV)/bin/fedw2v transcribe $(DEMO)/sample.wav --model $(DEMO_RUN) --decoder beam --lm $(DEMO)/lm; \
	echo "== its reference ($$stm)"; \
	grep -v ignore_time_segment_in_scoring $$stm | head -n 3 | cut -d' ' -f7-; \
	echo "== WER by participation (every client's local test split, every kept checkpoint)"; \
	$(VENV)/bin/fedw2v evaluate $(DEMO_RUN) --participation; \
	echo "== speaker footprints of the client updates (lower EER = more identity leaks)"; \
	$(VENV)/bin/fedw2v footprint $(DEMO_RUN); \
	echo "make demo: done in $$(( $$(date +%s) - start )) s; everything is in $(DEMO)/ (run: $(DEMO_RUN))"

# Rebuild the packaged model the demo starts from (scripts/pretrain_tiny.py: synth a pretraining corpus of other
# voices, train `tiny` centrally with one thread and a fixed seed, evaluate, copy); same machine, same bytes.
pretrained: install
	$(PY) scripts/pretrain_tiny.py --demo-voices $(DEMO_VOICES)

bench: install
	$(PY) benchmarks/prepare_scale.py
	$(PY) benchmarks/partition_scale.py --cli
	$(PY) benchmarks/aggregate.py
	$(PY) benchmarks/transcribe.py
	$(PY) benchmarks/round_overhead.py
	$(PY) benchmarks/cpu_heap.py
	$(PY) benchmarks/audio_gradient.py
	$(PY) benchmarks/cpu_kernels.py
	if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) benchmarks/gpu_client_step.py; else echo "no GPU here: benchmarks/gpu_client_step.py not run"; fi

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
