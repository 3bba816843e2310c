// emulator/include/cuda_runtime.h — the emulated build's <cuda_runtime.h>: gkd's cuda/
// sources include it by that name and get emulator/runtime.h (the CPU, strictly).
#pragma once
#include "../runtime.h"
