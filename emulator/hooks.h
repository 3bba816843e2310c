// emulator/hooks.h — what the emulated cuBLAS (emulator/cublas.cpp, its own shared
// library, opened by gkd's dlopen seam like the real one) asks of the emulated runtime
// compiled into the program: the program exports these C functions (-rdynamic).
#pragma once
#include <cstddef>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

extern "C" {
// Runs work(ctx) on `stream` now, or records it when the stream is being captured into a
// graph (then release(ctx) runs when the graph is destroyed, else right after work).
// Returns a cudaError_t: nonzero when the call is refused (a capture rule, a sticky fault).
int gkd_emu_enqueue(cudaStream_t stream, void (*work)(void*), void* ctx, void (*release)(void*), const char* what);
// 1 when [p, p + bytes) lies inside one device allocation (cudaMalloc)
int gkd_emu_is_device_range(const void* p, size_t bytes);
// A fault seen while work runs (a pointer past its allocation): a sticky launch failure.
void gkd_emu_fault(const char* message);
// 1 while `stream` is being captured into a graph
int gkd_emu_is_capturing(cudaStream_t stream);
// A GEMM's floating-point operations (2 m n k a product), added as it runs: the program
// counts cublasSgemm_v2's (batched = 0) apart from the strided batched calls' (batched = 1)
void gkd_emu_count_flops(double flops, int batched);
}
