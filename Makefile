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
HEADERS  := model.h tokenizer.h utils.h data/dataset.h data/tasks.h

.PHONY: all test unit-test cli-test clean check-deps

all: check-deps gkd

check-deps:
	@test -f /usr/include/nlohmann/json.hpp || { echo "missing nlohmann/json: apt-get install nlohmann-json3-dev"; exit 1; }

gkd: gkd.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) -x c++ gkd.cu -o $@ -lm

tests/test_gkd: tests/test_gkd.cpp gkd.cu $(HEADERS)
	@test -f /usr/include/doctest/doctest.h || { echo "missing doctest: apt-get install doctest-dev"; exit 1; }
	$(CXX) $(CXXFLAGS) tests/test_gkd.cpp -o $@ -lm

unit-test: tests/test_gkd
	./tests/test_gkd

cli-test: gkd
	bash tests/cli_test.sh

# both suites; the last line is "N passed, N failed"
test: gkd tests/test_gkd
	@bash tests/run_tests.sh

clean:
	rm -f gkd tests/test_gkd
