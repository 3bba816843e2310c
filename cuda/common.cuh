// cuda/common.cuh — what every GPU file of gkd needs: error checks, NVTX ranges, cuBLAS
// (opened at run time), the device context, device buffers, block reductions, and the
// GEMM wrappers in model.h's row-major terms.
//
// Part of gkd's one translation unit: gkd.cu includes it (through device.h) in nvcc builds,
// and in the emulated build (g++ against emulator/, which stands in for the CUDA headers);
// the plain g++ build never sees a file of cuda/.
//
// Tricks worth knowing:
// - cuBLAS is dlopen'd when a GPU run starts, not linked: linked, every start of gkd, CPU
//   runs included, would load it and the cuBLASLt it needs (54 MB and 542 MB of library
//   in CUDA 13.0).
// - Every check macro names the file and line, the call that failed, and a hint for the
//   errors a user can fix (out of memory, no code for this GPU, an old driver).
// - DeviceBuffer counts what gkd allocates, so `gkd bench` can report its own peak apart
//   from the CUDA context's.
// - block_max_sum merges (max, sum of exp) pairs: one pass gives a softmax normaliser over
//   any row length, whatever the block size, without overflow.
// - Every kernel launch goes through GPU_LAUNCH (gpu::launch): <<<...>>> in the nvcc build,
//   the emulator's launch in the emulated one, and the same check in both.
// - Every launch goes to gpu::stream(), the legacy default stream unless a StreamScope
//   says otherwise: that is how a decode step is captured as a CUDA graph (capture_graph).
// - gemm and gemm_batched take fp32 or bf16 operands (cuda/precision.cuh): all fp32 is a
//   cublasSgemm (TF32 with --tf32), anything bf16 a cublasGemmEx with fp32 accumulation.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <unistd.h>
#include <nvtx3/nvToolsExt.h>

#include "precision.cuh"

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
static void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e == cudaSuccess) return;
    const char* hint = e == cudaErrorMemoryAllocation ? " (out of device memory: lower --batch or --max-new-tokens)"
                     : e == cudaErrorNoKernelImageForDevice ? " (this binary has no code for this GPU: rebuild with make GPU_ARCH=sm_XY)"
                     : e == cudaErrorInsufficientDriver ? " (the driver is older than this CUDA toolkit)" : "";
    GKD_FAIL("%s:%d: CUDA error: %s, in %s%s", file, line, cudaGetErrorString(e), what, hint);
}
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
static void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    const char* name = s == CUBLAS_STATUS_NOT_INITIALIZED ? "CUBLAS_STATUS_NOT_INITIALIZED"
                     : s == CUBLAS_STATUS_ALLOC_FAILED ? "CUBLAS_STATUS_ALLOC_FAILED (out of device memory)"
                     : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE (a size, leading dimension or stride out of range)"
                     : s == CUBLAS_STATUS_EXECUTION_FAILED ? "CUBLAS_STATUS_EXECUTION_FAILED"
                     : "a cuBLAS error";
    GKD_FAIL("%s:%d: cuBLAS error %d, %s, in %s", file, line, (int)s, name, what);
}

// NVTX ranges name the phases of a step in Nsight Systems' timeline.
struct NvtxRange {
    explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
};

// cuBLAS is opened when a GPU run starts, not linked, so that a CPU run never loads it
// (with cuBLASLt, hundreds of MB of library). The eight functions gkd calls, looked up by
// name.
struct CublasApi {
    decltype(&cublasCreate_v2) create = nullptr;
    decltype(&cublasSetMathMode) set_math_mode = nullptr;
    decltype(&cublasSgemm_v2) sgemm = nullptr;
    decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
    // (cublas_api.h overloads these two for an older compute-type argument: the C functions' types)
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
    cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                              const void*, const void*, cudaDataType, int, long long, const void*,
                                              cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                              long long, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
    decltype(&cublasSetStream_v2) set_stream = nullptr;
    decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
};
static CublasApi& cublas() {
    static CublasApi api;
    return api;
}
// Where cuBLAS may be, in the order tried: the loader's own search (this binary's rpath,
// LD_LIBRARY_PATH, the loader's cache), then the CUDA toolkit's folders and Python wheels'
// nvidia/cublas/lib (pip's CUDA libraries, which the loader never searches).
static std::vector<std::string> cublas_candidates(const std::string& file) {
    std::vector<std::string> out = {file};
    std::vector<std::string> roots;
    if (const char* home = getenv("CUDA_HOME")) roots.push_back(home);
    if (const char* path = getenv("CUDA_PATH")) roots.push_back(path);
    roots.push_back("/usr/local/cuda");
    for (const std::string& r : roots)
        for (const char* sub : {"/lib64/", "/lib/", "/targets/x86_64-linux/lib/", "/targets/sbsa-linux/lib/"})
            out.push_back(r + sub + file);
    std::vector<std::string> sites = {"/usr/local/lib", "/usr/lib"};
    if (const char* home = getenv("HOME")) sites.push_back(std::string(home) + "/.local/lib");
    for (const std::string& site : sites)
        for (int minor = 8; minor <= 14; minor++)
            for (const char* kind : {"/site-packages", "/dist-packages"})
                out.push_back(site + strf("/python3.%d", minor) + kind + "/nvidia/cublas/lib/" + file);
    return out;
}
static void load_cublas() {
    CublasApi& api = cublas();
    if (api.create) return;
    const std::string file = strf("libcublas.so.%d", CUBLAS_VER_MAJOR);
    void* lib = nullptr;
    std::string tried;
    for (const std::string& name : cublas_candidates(file)) {
        if (name[0] == '/' && access(name.c_str(), R_OK) != 0) continue;
        if ((lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
        tried += strf("; %s: %s", name.c_str(), dlerror());
    }
    if (!lib)
        GKD_FAIL("--device cuda: cannot load cuBLAS %s: looked through the loader (rpath, LD_LIBRARY_PATH, ldconfig's "
                 "cache), $CUDA_HOME, $CUDA_PATH and /usr/local/cuda (lib64, lib, targets/*/lib) and Python's "
                 "nvidia/cublas/lib%s; put its folder on LD_LIBRARY_PATH", file.c_str(), tried.c_str());
    auto symbol = [&](const char* name) {
        void* f = dlsym(lib, name);
        if (!f) GKD_FAIL("--device cuda: %s lacks %s: a cuBLAS older than this build's (%d)", file.c_str(), name,
                         CUBLAS_VER_MAJOR);
        return f;
    };
    api.create = (decltype(api.create))symbol("cublasCreate_v2");
    api.set_math_mode = (decltype(api.set_math_mode))symbol("cublasSetMathMode");
    api.sgemm = (decltype(api.sgemm))symbol("cublasSgemm_v2");
    api.sgemm_strided_batched = (decltype(api.sgemm_strided_batched))symbol("cublasSgemmStridedBatched");
    api.gemm_ex = (decltype(api.gemm_ex))symbol("cublasGemmEx");
    api.gemm_strided_batched_ex = (decltype(api.gemm_strided_batched_ex))symbol("cublasGemmStridedBatchedEx");
    api.set_stream = (decltype(api.set_stream))symbol("cublasSetStream_v2");
    api.set_workspace = (decltype(api.set_workspace))symbol("cublasSetWorkspace_v2");
}

// The workspace gkd gives cuBLAS: 32 MiB, what NVIDIA's documentation recommends on Hopper.
constexpr size_t CUBLAS_WORKSPACE_BYTES = (size_t)32 << 20;

// The device, the cuBLAS handle and the precision mode, set once by gpu_init.
struct GpuContext {
    bool ready = false, tf32 = false;
    cublasHandle_t blas = nullptr;
    void* blas_workspace = nullptr;          // cuBLAS's workspace, gkd's own (set after every cublasSetStream)
    cudaStream_t stream = 0;                 // where every launch goes: the legacy default stream,
                                             // except while a decode step is captured (StreamScope)
    cudaDeviceProp prop{};
    double clock_hz = 0;                     // the SM clock the peak rates assume
    size_t bytes_now = 0, bytes_peak = 0;    // what gkd has allocated on the device
};
static GpuContext& gpu_context() { static GpuContext g; return g; }

static int gpu_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;  // no driver or no device: 0
}

static void gpu_init(bool tf32) {
    GpuContext& g = gpu_context();
    if (!g.ready) {
        if (gpu_count() == 0) GKD_FAIL("--device cuda: no CUDA GPU is visible (nvidia-smi should list one); use --device cpu");
        const int device = world().local_rank % gpu_count();  // data parallel: a GPU per rank on each machine
        CUDA_CHECK(cudaSetDevice(device));
        CUDA_CHECK(cudaGetDeviceProperties(&g.prop, device));
        int khz = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device));
        g.clock_hz = khz * 1e3;
        load_cublas();
        CUBLAS_CHECK(cublas().create(&g.blas));
        // gkd's own workspace: cuBLAS would otherwise allocate one on a stream's first call,
        // which inside a graph capture lands in the graph
        CUDA_CHECK(cudaMalloc(&g.blas_workspace, CUBLAS_WORKSPACE_BYTES));
        CUBLAS_CHECK(cublas().set_workspace(g.blas, g.blas_workspace, CUBLAS_WORKSPACE_BYTES));
        g.ready = true;
    }
    g.tf32 = tf32;
    CUBLAS_CHECK(cublas().set_math_mode(g.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

// The precision a run gets when --precision is not given: bf16 where the tensor cores take
// it (compute capability 8.0 and above), fp32 before.
static Precision default_precision() {
    const GpuContext& g = gpu_context();
    return g.prop.major >= 8 ? Precision::bf16 : Precision::fp32;
}

// Peak rates of the card at its clock, for MFU: fp32 on the CUDA cores (128 FMA lanes per
// SM from sm_86 on, 64 on sm_80); TF32 and bf16 (fp32 accumulation) on the tensor cores,
// dense, bf16 at twice TF32's rate (H100 SXM: 989 TFLOP/s bf16 at 1.83 GHz on 132 SMs).
static double gpu_peak_flops(bool tf32, Precision precision = Precision::fp32) {
    const GpuContext& g = gpu_context();
    const int cc = g.prop.major * 10 + g.prop.minor;
    double fp32_per_sm_clock = 2.0 * (cc == 80 ? 64 : 128);
    double tf32_per_sm_clock = cc >= 90 ? 2048 : cc == 80 ? 1024 : 512;
    double per_sm_clock = precision == Precision::bf16 ? 2 * tf32_per_sm_clock : tf32 ? tf32_per_sm_clock : fp32_per_sm_clock;
    return g.prop.multiProcessorCount * g.clock_hz * per_sm_clock;
}

// A growable device array, counted in gpu_context's memory tally.
template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t count = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { release(); }
    void release() {
        if (!ptr) return;
        cudaFree(ptr);
        gpu_context().bytes_now -= count * sizeof(T);
        ptr = nullptr;
        count = 0;
    }
    // at least n elements; the contents are not kept when it grows
    T* ensure(size_t n) {
        if (n <= count) return ptr;
        release();
        CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
        count = n;
        GpuContext& g = gpu_context();
        g.bytes_now += n * sizeof(T);
        g.bytes_peak = std::max(g.bytes_peak, g.bytes_now);
        return ptr;
    }
    void upload(const T* host, size_t n) { ensure(n); CUDA_CHECK(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice)); }
    void upload(const std::vector<T>& host) { upload(host.data(), host.size()); }
};

template <typename T>
static void download(T* host, const T* device, size_t n) {
    CUDA_CHECK(cudaMemcpy(host, device, n * sizeof(T), cudaMemcpyDeviceToHost));
}

// The emulated build gives every tensor carved from one allocation (model.h's parameters,
// gradients, activations) guard zones of its own: the emulator moves each tensor a launch
// reaches to an allocation of its own for that launch (emulator/runtime.h), so an index
// one past it fails, naming it. Kernels that walk a whole carved allocation say so. The
// nvcc build compiles both to nothing.
#ifdef GKD_CUDA_EMULATOR
#define GKD_WALKS_WHOLE_ALLOCATIONS(name, kernel) \
    [[maybe_unused]] static const bool emu_whole_##name = ::emu::register_whole_allocations((const void*)&kernel);
// counts[i] elements of T each, back to back from base
template <typename T>
static void name_carved_tensors(const char* group, T* base, const size_t* counts, const char* const* names, int n) {
    std::vector<size_t> bytes(n);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += bytes[i] = counts[i] * sizeof(T);
    emu::name_tensors(group, base, total, bytes.data(), names, n);
}
#else
#define GKD_WALKS_WHOLE_ALLOCATIONS(name, kernel)
template <typename T>
static void name_carved_tensors(const char*, T*, const size_t*, const char* const*, int) {}
#endif

namespace gpu {

// The stream of every gkd launch and cuBLAS call (gpu_context().stream).
inline cudaStream_t stream() { return gpu_context().stream; }

// ---- launching a kernel: the one place that does, in both builds
//
// GPU_LAUNCH(kernel, grid, block, shared_bytes, stream, args...) launches kernel<<<grid,
    // block, shared_bytes, stream>>>(args...) and checks the launch, naming the call site and
    // the kernel. In the emulated build the emulator runs it (emulator/runtime.h), checking
    // the launch as a GPU does and the kernel's execution more strictly.
    #define GPU_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    gpu::launch(#kernel, __FILE__, __LINE__, kernel, grid, block, shared_bytes, stream, __VA_ARGS__)
    template <typename... Params, typename... Args>
    static void launch(const char* name, const char* file, int line, void (*kernel)(Params...), dim3 grid, dim3 block,
    size_t shared_bytes, cudaStream_t on, Args&&... args) {
    #ifdef GKD_CUDA_EMULATOR
    cuda_check(emu::launch(name, kernel, grid, block, shared_bytes, on, std::forward<Args>(args)...), name, file, line);
#else
    kernel<<<grid, block, shared_bytes, on>>>(std::forward<Args>(args)...);
    cuda_check(cudaGetLastError(), name, file, line);
#endif
}

constexpr int THREADS = 256;
inline unsigned blocks_for(size_t n, int threads = THREADS) { return (unsigned)((n + threads - 1) / threads); }
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int NORM_BLOCKS = 512;  // the gradient norm's fixed grid (cuda/adamw.cuh)

// ---- reductions: warp shuffles, then one value per warp through shared memory

template <typename T>
__device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the result.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // a previous call's readers are done with `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    T total = lane < warps ? partial[lane] : T(0);
    return warp_sum(total);
}

// (value, id) pairs ranked the larger value first, the lower id on ties: the CPU's argmax
// and teacher_top_k_row's `before`
template <typename T>
__device__ inline bool ranks_before(T v, int i, T w, int j) { return v > w || (v == w && i < j); }

// The block's best (value, id) in ranks_before's order, to every thread (blockDim.x a
// multiple of 32): the argmax of the sampler, the top-K selection and the judging.
template <typename T>
__device__ void block_best(T& v, int& id) {
    __shared__ T best_v[32];
    __shared__ int best_i[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(FULL_MASK, id, o);
        if (ranks_before(ov, oi, v, id)) { v = ov; id = oi; }
    }
    __syncthreads();  // a previous call's readers are done
    if (lane == 0) { best_v[warp] = v; best_i[warp] = id; }
    __syncthreads();
    v = best_v[0];
    id = best_i[0];
    for (int w = 1; w < warps; w++)
        if (ranks_before(best_v[w], best_i[w], v, id)) { v = best_v[w]; id = best_i[w]; }
}

// A running softmax normaliser: max m and sum z of exp(x - m), merged in any grouping.
struct MaxSum {
    double m, z;
};
__device__ inline MaxSum max_sum_add(MaxSum a, double x) {
    if (x > a.m) return {x, a.z * exp(a.m - x) + 1.0};
    return {a.m, a.z + exp(x - a.m)};
}
__device__ inline MaxSum max_sum_merge(MaxSum a, MaxSum b) {
    if (a.m < b.m) { MaxSum t = a; a = b; b = t; }
    if (b.m == -INFINITY) return a;
    return {a.m, a.z + b.z * exp(b.m - a.m)};
}
__device__ MaxSum block_max_sum(MaxSum v) {
    __shared__ double pm[32], pz[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1)
        v = max_sum_merge(v, {__shfl_xor_sync(FULL_MASK, v.m, o), __shfl_xor_sync(FULL_MASK, v.z, o)});
    __syncthreads();
    if (lane == 0) { pm[warp] = v.m; pz[warp] = v.z; }
    __syncthreads();
    MaxSum w = lane < warps ? MaxSum{pm[lane], pz[lane]} : MaxSum{-INFINITY, 0.0};
    for (int o = 16; o > 0; o >>= 1)
        w = max_sum_merge(w, {__shfl_xor_sync(FULL_MASK, w.m, o), __shfl_xor_sync(FULL_MASK, w.z, o)});
    return w;
}

// ---- GEMMs through cuBLAS, in the row-major terms of cpu/blas.h's gemm:
// C (M, N) = op(A) op(B) + beta C. cuBLAS is column-major, and a row-major matrix is its
// column-major transpose, so we ask it for C^T = op(B)^T op(A)^T. A and B have one type
// (AB), C its own: all fp32 is an SGEMM (TF32 with --tf32); with bf16 anywhere, a GemmEx
// with fp32 accumulation, C rounded once if it is bf16.
template <typename AB, typename CT>
static void gemm(bool trans_a, bool trans_b, int M, int N, int K, const AB* A, int lda, const AB* B, int ldb,
                 float beta, CT* C, int ldc) {
    const float one = 1.0f;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if constexpr (is_fp32<AB>() && is_fp32<CT>())
        CUBLAS_CHECK(cublas().sgemm(gpu_context().blas, op_b, op_a, N, M, K, &one, B, ldb, A, lda, &beta, C, ldc));
    else
        CUBLAS_CHECK(cublas().gemm_ex(gpu_context().blas, op_b, op_a, N, M, K, &one, B, cuda_type<AB>(), ldb, A,
                                      cuda_type<AB>(), lda, &beta, C, cuda_type<CT>(), ldc, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
}
// `batch` independent products, each operand `stride_*` elements after the previous one
template <typename T>
static void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, const T* A, int lda, long long stride_a,
                         const T* B, int ldb, long long stride_b, float beta, T* C, int ldc, long long stride_c,
                         int batch) {
    const float one = 1.0f;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if constexpr (is_fp32<T>())
        CUBLAS_CHECK(cublas().sgemm_strided_batched(gpu_context().blas, op_b, op_a, N, M, K, &one, B, ldb, stride_b, A,
                                                    lda, stride_a, &beta, C, ldc, stride_c, batch));
    else
        CUBLAS_CHECK(cublas().gemm_strided_batched_ex(gpu_context().blas, op_b, op_a, N, M, K, &one, B, cuda_type<T>(),
                                                      ldb, stride_b, A, cuda_type<T>(), lda, stride_a, &beta, C,
                                                      cuda_type<T>(), ldc, stride_c, batch, CUBLAS_COMPUTE_32F,
                                                      CUBLAS_GEMM_DEFAULT));
}

// Sends every launch and cuBLAS call of its lifetime to stream s, then back. Stream capture
// (capture_graph) refuses work on the legacy default stream, where gkd's launches go
// otherwise.
struct StreamScope {
    cudaStream_t saved;
    // cublasSetStream drops a workspace set before it: gkd's is set again after each
    explicit StreamScope(cudaStream_t s) : saved(gpu_context().stream) {
        GpuContext& g = gpu_context();
        CUBLAS_CHECK(cublas().set_stream(g.blas, s));
        CUBLAS_CHECK(cublas().set_workspace(g.blas, g.blas_workspace, CUBLAS_WORKSPACE_BYTES));
        g.stream = s;
    }
    ~StreamScope() {  // no check: a destructor must not throw, and these calls only fail on a bad handle
        GpuContext& g = gpu_context();
        cublas().set_stream(g.blas, saved);
        cublas().set_workspace(g.blas, g.blas_workspace, CUBLAS_WORKSPACE_BYTES);
        g.stream = saved;
    }
};

// work() captured on `capture_stream` (a blocking stream: it waits for the default stream's earlier
// work, and the default stream for it) and instantiated: replay with cudaGraphLaunch. Any
// launch that strays to another stream, or an allocation, fails the capture with an error.
// The caller runs work() once on that stream before (a warm-up: lazy module loading and
// cuBLAS's first call happen outside the graph). Instantiated with auto-free-on-launch, so
// that an allocation a library still makes inside the graph is freed at each replay.
template <typename Work>
static cudaGraphExec_t capture_graph(cudaStream_t capture_stream, Work work) {
    cudaGraph_t graph = nullptr;
    {
        StreamScope on(capture_stream);
        CUDA_CHECK(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal));
        try {
            work();
        } catch (...) {
            cudaStreamEndCapture(capture_stream, &graph);  // leave the stream usable, then report the first error
            if (graph) cudaGraphDestroy(graph);
            throw;
        }
        CUDA_CHECK(cudaStreamEndCapture(capture_stream, &graph));
    }
    cudaGraphExec_t exec = nullptr;
    cudaError_t e = cudaGraphInstantiate(&exec, graph, cudaGraphInstantiateFlagAutoFreeOnLaunch);
    cudaGraphDestroy(graph);
    CUDA_CHECK(e);
    return exec;
}

}  // namespace gpu

// ----------------------------------------------------------------------------
// data parallelism between GPUs: the ranks' gradients summed by NCCL (distributed.h)

#ifdef GKD_NCCL
#include <nccl.h>  // the emulated build: emulator/include/nccl.h, over MPI
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)
static void nccl_check(ncclResult_t r, const char* what, const char* file, int line) {
    if (r != ncclSuccess) GKD_FAIL("%s:%d: NCCL error: %s, in %s", file, line, ncclGetErrorString(r), what);
}
// The ranks' NCCL communicator, made on first use (rank 0's unique id goes to the others
// over MPI) and destroyed at the process's exit.
struct NcclCommunicator {
    ncclComm_t comm = nullptr;
    ~NcclCommunicator() {
        if (comm) ncclCommDestroy(comm);  // no check: at exit there is no one to tell
    }
};
static NcclCommunicator& nccl_communicator() {
    static NcclCommunicator c;
    return c;
}
// d (n floats on this rank's GPU) <- its sum over the ranks. After the sum, the
// communicator's asynchronous error (a peer that failed, a network fault) is read: NCCL
// reports those there, not in the call's result.
static void gpu_sum_across_ranks(float* d, size_t n) {
    const Ranks& w = world();
    if (!w.mpi) return;  // not launched by mpirun (mpirun -np 1 does run NCCL, over one GPU)
    ncclComm_t& comm = nccl_communicator().comm;
    if (!comm) {
        ncclUniqueId id;
        if (w.root()) NCCL_CHECK(ncclGetUniqueId(&id));
        MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
        NCCL_CHECK(ncclCommInitRank(&comm, w.size, id, w.rank));
    }
    NCCL_CHECK(ncclAllReduce(d, d, n, ncclFloat, ncclSum, comm, 0));
    CUDA_CHECK(cudaStreamSynchronize(0));
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
    NCCL_CHECK(async);
}
#else
static void gpu_sum_across_ranks(float*, size_t) {
    if (world().size > 1)
        GKD_FAIL("--device cuda with %d ranks: this build has no NCCL to sum the GPUs' gradients (make found mpicxx "
                 "but no libnccl beside nvcc); use --device cpu, or one rank", world().size);
}
#endif
