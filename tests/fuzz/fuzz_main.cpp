// tests/fuzz/fuzz_main.cpp — a libFuzzer harness; FUZZ_TARGET (checkpoint, training_state,
// jsonl_line or tokenizer) picks the target at compile time. Built by `make fuzz`.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::FUZZ_TARGET(data, size);
    return 0;
}
