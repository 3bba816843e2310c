// tests/test_emulator.cu — proof that the SIMT emulator (emulator/) catches what it
// claims: each test runs a broken kernel or call in a child process and expects the
// failure, with the words it must print. `make test-gpu-emulated` builds it (emulated
// build only: on a GPU most of these bugs pass silently, which is why the emulator exists).
//
// The kernels are written as for the GPU (prepare_sources.py rewrites their __shared__
// and __launch_bounds__ as it does cuda/'s). A test that passes shows the failure; one
// that finds no failure, or the wrong words, fails. The last line is "N passed, N failed".
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <string>

static int passed = 0, failed = 0;

// Runs body in a child with stderr captured; body returns the message it saw (a CUDA
// error string, a status) or "" when nothing failed. The child's output and what it
// returned must contain `expected`.
static void expect_failure(const char* name, const std::string& expected, std::function<std::string()> body) {
    const char* only = getenv("GKD_EMU_TEST_ONLY");  // runs only the cases whose name holds it
    if (only && !strstr(name, only)) return;
    int pipefd[2];
    if (pipe(pipefd) != 0) { perror("pipe"); exit(1); }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        dup2(pipefd[1], 2);
        dup2(pipefd[1], 1);
        std::string seen = body();
        printf("%s\n", seen.empty() ? "(no failure)" : seen.c_str());
        fflush(stdout);
        _exit(0);
    }
    close(pipefd[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, (size_t)n);
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    const bool ok = out.find(expected) != std::string::npos;
    (ok ? passed : failed)++;
    printf("%s  %s: expects \"%s\"\n      it printed: %s\n", ok ? "ok  " : "FAIL", name, expected.c_str(), out.c_str());
}

static std::string last_error(cudaError_t e) { return e == cudaSuccess ? "" : cudaGetErrorString(e); }
template <typename... P, typename... A>
static std::string run(const char* name, void (*k)(P...), dim3 grid, dim3 block, size_t shared, A... args) {
    cudaError_t e = emu::launch(name, k, grid, block, shared, nullptr, args...);
    return last_error(e);
}
static float* device_floats(size_t n) {
    float* p = nullptr;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) { printf("cudaMalloc failed\n"); _exit(1); }
    return p;
}

// ---- kernels, each with one bug

// a block reduction called twice, the barrier that protects `partial` from the second
// call's writes removed (gkd's block_sum, cuda/common.cuh, without its first __syncthreads)
__device__ float sum_without_first_barrier(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = lane < warps ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    return total;
}
__global__ void two_sums_kernel(float* out, const float* x) {
    const float a = sum_without_first_barrier(x[threadIdx.x]);
    const float b = sum_without_first_barrier(x[threadIdx.x] * 2.0f);
    if (threadIdx.x == 0) { out[0] = a; out[1] = b; }
}
// the other barrier removed: each warp reads the partials before the others wrote them
__global__ void sum_without_second_barrier_kernel(float* out, const float* x) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp] = v;
    float total = lane < warps ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    if (threadIdx.x == 0) out[0] = total;
}
// every block writes the same element: which block wins depends on their order
__global__ void blocks_race_kernel(float* out) {
    if (threadIdx.x == 0) out[0] = (float)blockIdx.x;
}
// a full-mask shuffle that only lanes 0-15 reach
__global__ void half_warp_shuffle_kernel(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
// masks that disagree: lanes 0-15 name the lower half, lanes 16-31 the whole warp
__global__ void mask_disagreement_kernel(float* out) {
    const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffffffffu;
    out[threadIdx.x] = __shfl_xor_sync(mask, (float)threadIdx.x, 1);
}
// a lane that calls a shuffle with a mask that leaves it out
__global__ void lane_outside_mask_kernel(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (float)threadIdx.x, 1);
}
// the bound test off by one: thread n writes out[n], past the end
__global__ void off_by_one_kernel(float* out, const float* in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > n) return;  // should be i >= n
    out[i] = in[i < n ? i : 0] + 1.0f;
}
// a read a page past the end of its buffer
__global__ void far_read_kernel(float* out, const float* in) {
    if (threadIdx.x == 0) out[0] = in[300];  // 44 floats past a 256-float buffer
}
// threads at two different barriers
__global__ void divergent_barrier_kernel(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}
// threads that exit while the others wait at a barrier
__global__ void exit_before_barrier_kernel(float* out) {
    if (threadIdx.x >= 64) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
// reads memory nobody wrote: the result must show it
__global__ void copy_kernel(float* out, const float* in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
__global__ void unwritten_shared_kernel(float* out) {
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;  // half of it
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
__global__ void dynamic_shared_kernel(float* out) {
    extern __shared__ float big[];
    big[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}
// 32 KB of static shared memory, to be launched with 20 KB of dynamic beside it
__global__ void big_static_shared_kernel(float* out) {
    __shared__ float table[8192];
    extern __shared__ float more[];
    table[threadIdx.x] = 1.0f;
    more[threadIdx.x] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = table[threadIdx.x] + more[threadIdx.x];
}
// one float past the end of the launch's dynamic shared memory (blockDim.x floats)
__global__ void dynamic_shared_overrun_kernel(float* out) {
    extern __shared__ float row[];
    row[threadIdx.x + 1] = (float)threadIdx.x;  // should be row[threadIdx.x]
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void __launch_bounds__(128, 2) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }
__global__ void misaligned_float4_kernel(float* out, const float* in) {
    const float4 v = reinterpret_cast<const float4*>(in + 1)[threadIdx.x];  // in + 1 is not 16-byte aligned
    out[threadIdx.x] = v.x;
}

static std::string read_back(const float* d, size_t i) {
    float h = 0;
    if (cudaError_t e = cudaMemcpy(&h, d + i, sizeof h, cudaMemcpyDeviceToHost)) return last_error(e);
    char t[64];
    snprintf(t, sizeof t, "value %g", h);
    return t;
}

typedef cublasStatus_t (*Sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float*,
                                const float*, int, const float*, int, const float*, float*, int);

// C (20 x 20) = A (20 x 20, leading dimension lda) B through the emulated cuBLAS, opened
// as gkd opens it (dlopen); gives up the child with a message when it cannot be opened
// On `stream` (set with cublasSetStream_v2) when one is given, with no workspace set after it.
static cublasStatus_t emulated_sgemm(const float* A, int lda, const float* B, float* C, cudaStream_t stream = nullptr) {
    void* lib = dlopen("libcublas.so.13", RTLD_NOW);
    if (!lib) { printf("cannot open the emulated cuBLAS: %s\n", dlerror()); _exit(1); }
    auto create = (cublasStatus_t(*)(cublasHandle_t*))dlsym(lib, "cublasCreate_v2");
    auto set_stream = (cublasStatus_t(*)(cublasHandle_t, cudaStream_t))dlsym(lib, "cublasSetStream_v2");
    auto sgemm = (Sgemm)dlsym(lib, "cublasSgemm_v2");
    cublasHandle_t h;
    create(&h);
    if (stream) set_stream(h, stream);
    const float one = 1, zero = 0;
    return sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 20, 20, 20, &one, A, lda, B, 20, &zero, C, 20);
}

int main() {
    setenv("GKD_EMU_RACE", "1", 1);
    printf("the emulator's expected failures (each in a child process)\n");

    expect_failure("a reduction with one __syncthreads removed (the one before the partials are reused)",
                   "depend on the order its threads run in", [] {
                       float* x = device_floats(256);
                       float* out = device_floats(2);
                       std::vector<float> h(256);
                       for (int i = 0; i < 256; i++) h[i] = 1.0f + 0.001f * i;
                       cudaMemcpy(x, h.data(), sizeof(float) * 256, cudaMemcpyHostToDevice);
                       return run("two_sums_kernel", two_sums_kernel, 1, 256, 0, out, (const float*)x);
                   });
    expect_failure("a reduction with the other __syncthreads removed: unwritten shared memory reads as NaN",
                   "value nan", [] {
                       float* x = device_floats(256);
                       float* out = device_floats(1);
                       cudaMemset(x, 0, sizeof(float) * 256);
                       setenv("GKD_EMU_RACE", "0", 1);  // the poison alone shows this one
                       std::string e = run("sum_without_second_barrier_kernel", sum_without_second_barrier_kernel, 1, 256, 0, out, (const float*)x);
                       return e.empty() ? read_back(out, 0) : e;
                   });
    expect_failure("a full-mask shuffle inside a branch that half a warp takes", "of its mask never arrive", [] {
        return run("half_warp_shuffle_kernel", half_warp_shuffle_kernel, 1, 32, 0, device_floats(32));
    });
    expect_failure("lanes whose shuffle masks disagree", "masks disagree", [] {
        return run("mask_disagreement_kernel", mask_disagreement_kernel, 1, 32, 0, device_floats(32));
    });
    expect_failure("a lane calling a shuffle whose mask leaves it out", "which leaves it out", [] {
        return run("lane_outside_mask_kernel", lane_outside_mask_kernel, 1, 32, 0, device_floats(32));
    });
    expect_failure("a kernel index off by one", "wrote 4 bytes past the end of the 4000-byte device allocation", [] {
        float* in = device_floats(1000);
        float* out = device_floats(1000);
        cudaMemset(in, 0, 4000);
        std::string e = run("off_by_one_kernel", off_by_one_kernel, 4, 256, 0, out, (const float*)in, 1000);
        return e;
    });
    expect_failure("a read a page past the end of a buffer (the guard page)", "bytes past the end of the 1024-byte device allocation", [] {
        float* in = device_floats(256);
        float* out = device_floats(1);
        return run("far_read_kernel", far_read_kernel, 1, 32, 0, out, (const float*)in);
    });
    expect_failure("threads at two different __syncthreads()", "the block's threads are at different barriers", [] {
        return run("divergent_barrier_kernel", divergent_barrier_kernel, 1, 64, 0, device_floats(64));
    });
    expect_failure("threads exiting while others wait at a barrier", "exited while thread", [] {
        return run("exit_before_barrier_kernel", exit_before_barrier_kernel, 1, 128, 0, device_floats(128));
    });
    expect_failure("a read of device memory nobody wrote is NaN", "value nan", [] {
        float* in = device_floats(100);
        float* out = device_floats(100);
        std::string e = run("copy_kernel", copy_kernel, 1, 128, 0, out, (const float*)in, 100);
        return e.empty() ? read_back(out, 7) : e;
    });
    expect_failure("a read of static shared memory nobody wrote is NaN", "value nan", [] {
        float* out = device_floats(64);
        std::string e = run("unwritten_shared_kernel", unwritten_shared_kernel, 1, 64, 0, out);
        return e.empty() ? read_back(out, 40) : e;
    });
    expect_failure("more than 1024 threads a block", "the most is 1024", [] {
        return run("copy_kernel", copy_kernel, 1, 2048, 0, device_floats(1), (const float*)device_floats(1), 1);
    });
    expect_failure("more threads than __launch_bounds__", "more than its __launch_bounds__(128)", [] {
        return run("bounded_kernel", bounded_kernel, 1, 256, 0, device_floats(256));
    });
    expect_failure("64 KB of dynamic shared memory without the opt-in", "more than 48 KB needs cudaFuncSetAttribute", [] {
        return run("dynamic_shared_kernel", dynamic_shared_kernel, 1, 256, 64 * 1024, device_floats(256));
    });
    expect_failure("64 KB of dynamic shared memory with the opt-in: no failure", "value 1", [] {
        cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
        float* out = device_floats(256);
        std::string e = run("dynamic_shared_kernel", dynamic_shared_kernel, 1, 256, 64 * 1024, out);
        return e.empty() ? read_back(out, 0) : e;
    });
    expect_failure("a misaligned float4 load", "misaligned address", [] {
        float* in = device_floats(1024);
        cudaMemset(in, 0, 4096);
        return run("misaligned_float4_kernel", misaligned_float4_kernel, 1, 32, 0, device_floats(32), (const float*)in);
    });
    expect_failure("static and dynamic shared memory past 48 KB together", "bytes of static shared memory and 20480 of dynamic", [] {
        return run("big_static_shared_kernel", big_static_shared_kernel, 1, 64, 20480, device_floats(64));
    });
    expect_failure("a write one float past the dynamic shared memory", "past the end of its 256 bytes of dynamic shared memory", [] {
        return run("dynamic_shared_overrun_kernel", dynamic_shared_overrun_kernel, 1, 64, 256, device_floats(64));
    });
    // two tensors carved back to back from one allocation, named as cuda/ names model.h's:
    // an index one past the first lands in the second, where only the relocation can see it
    auto carve = [](size_t first, size_t second) {
        float* base = device_floats(first + second);
        cudaMemset(base, 0, (first + second) * sizeof(float));
        const size_t bytes[] = {first * sizeof(float), second * sizeof(float)};
        const char* const names[] = {"first", "second"};
        emu::name_tensors("test carve", base, bytes[0] + bytes[1], bytes, names, 2);
        return base;
    };
    expect_failure("a write one past a carved tensor", "tensor first of the test carve", [&] {
        float* base = carve(250, 250);
        float* in = device_floats(256);
        cudaMemset(in, 0, 256 * sizeof(float));
        return run("off_by_one_kernel", off_by_one_kernel, 1, 256, 0, base, (const float*)in, 250);
    });
    expect_failure("a read one past a carved tensor (into a guard page)", "tensor first of the test carve", [&] {
        float* base = carve(256, 256);
        float* out = device_floats(257);
        return run("copy_kernel", copy_kernel, 2, 256, 0, out, (const float*)base, 257);
    });
    expect_failure("a read one past a carved tensor (into its poisoned slack) is NaN", "value nan", [&] {
        float* base = carve(250, 250);
        float* out = device_floats(251);
        if (std::string e = run("copy_kernel", copy_kernel, 1, 256, 0, out, (const float*)base, 251); !e.empty()) return e;
        return read_back(out, 250);
    });
    expect_failure("blocks that race each other (the second pass reverses their order)", "depend on the order", [] {
        omp_set_num_threads(1);  // one OS thread: the blocks run strictly in the pass's order
        return run("blocks_race_kernel", blocks_race_kernel, 8, 32, 0, device_floats(1));
    });
    expect_failure("a host pointer passed to a kernel", "is no device pointer", [] {
        static float host[32];
        return run("half_warp_shuffle_kernel", half_warp_shuffle_kernel, 1, 32, 0, host);
    });
    expect_failure("a cuBLAS call with a wrong leading dimension", "lda = 10 < max(1, m = 20)", [] {
        float *A = device_floats(400), *B = device_floats(400), *C = device_floats(400);
        cublasStatus_t s = emulated_sgemm(A, 10, B, C);
        return s == CUBLAS_STATUS_INVALID_VALUE ? std::string("CUBLAS_STATUS_INVALID_VALUE") : std::string("status ") + std::to_string(s);
    });
    expect_failure("a cuBLAS operand past its allocation", "not all inside one device allocation", [] {
        float *A = device_floats(400), *B = device_floats(100), *C = device_floats(400);
        emulated_sgemm(A, 20, B, C);
        return std::string("returned");
    });
    expect_failure("a cuBLAS GemmEx with mixed operand types (bf16 A, fp32 B)", "CUBLAS_STATUS_NOT_SUPPORTED", [] {
        void* lib = dlopen("libcublas.so.13", RTLD_NOW);
        auto create = (cublasStatus_t(*)(cublasHandle_t*))dlsym(lib, "cublasCreate_v2");
        auto gemm_ex = (decltype(&cublasGemmEx))dlsym(lib, "cublasGemmEx");
        cublasHandle_t h;
        create(&h);
        float *A = device_floats(400), *B = device_floats(400), *C = device_floats(400);
        const float one = 1, zero = 0;
        gemm_ex(h, CUBLAS_OP_N, CUBLAS_OP_N, 20, 20, 20, &one, A, CUDA_R_16BF, 20, B, CUDA_R_32F, 20, &zero, C,
                CUDA_R_32F, 20, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        return std::string("returned");
    });
    expect_failure("a device-to-device copy whose source and destination overlap", "overlap", [] {
        float* x = device_floats(64);
        return last_error(cudaMemcpy(x + 8, x, 32 * sizeof(float), cudaMemcpyDeviceToDevice));
    });
    expect_failure("an allocation during graph capture", "cudaMalloc during stream capture", [] {
        cudaStream_t s;
        cudaStreamCreate(&s);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        float* p = nullptr;
        const std::string e = last_error(cudaMalloc(&p, 1024));
        cudaGraph_t g;
        cudaError_t end = cudaStreamEndCapture(s, &g);
        return e + (end == cudaErrorStreamCaptureInvalidated ? " (and the capture was invalidated)" : "");
    });
    expect_failure("a cuBLAS GEMM captured with no workspace of the caller's", "no workspace set", [] {
        float *A = device_floats(400), *B = device_floats(400), *C = device_floats(400);
        cudaStream_t s;
        cudaStreamCreate(&s);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        const cublasStatus_t status = emulated_sgemm(A, 20, B, C, s);
        return status == CUBLAS_STATUS_SUCCESS ? std::string() : "status " + std::to_string(status);
    });
    expect_failure("a synchronising call during graph capture", "cudaDeviceSynchronize during stream capture", [] {
        cudaStream_t s;
        cudaStreamCreate(&s);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        return last_error(cudaDeviceSynchronize());
    });
    expect_failure("a launch on the legacy stream during capture", "on the legacy default stream while", [] {
        float* out = device_floats(32);
        cudaStream_t s;
        cudaStreamCreate(&s);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        return run("half_warp_shuffle_kernel", mask_disagreement_kernel, 1, 32, 0, out);
    });
    expect_failure("a captured launch replays with its captured arguments", "value 3", [] {
        float* in = device_floats(1);
        float* out = device_floats(1);
        const float three = 3;
        cudaMemcpy(in, &three, 4, cudaMemcpyHostToDevice);
        cudaStream_t s;
        cudaStreamCreate(&s);
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        emu::launch("copy_kernel", copy_kernel, 1, 32, 0, s, out, (const float*)in, 1);
        cudaGraph_t g;
        cudaGraphExec_t x;
        cudaStreamEndCapture(s, &g);
        if (cudaError_t e = cudaGraphInstantiate(&x, g, 0)) return last_error(e);
        if (read_back(out, 0) != "value nan") return std::string("the captured launch ran during capture");
        cudaGraphLaunch(x, s);
        return read_back(out, 0);
    });
    printf("emulator: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
