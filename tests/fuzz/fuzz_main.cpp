// tests/fuzz/fuzz_main.cpp — a libFuzzer harness; FUZZ_TARGET (a function of targets.h:
// checkpoint, training_state, jsonl_line, tokenizer, bpe_text, tokenizer_json or
// safetensors) picks the target at compile time. Built by `make fuzz`.
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::FUZZ_TARGET(data, size);
    return 0;
}
