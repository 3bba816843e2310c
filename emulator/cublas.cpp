// emulator/cublas.cpp — the cuBLAS functions gkd calls, on the CPU: built as
// build/emulator/libcublas.so.N and opened by gkd's dlopen seam (cuda/common.cuh) in place
// of NVIDIA's library.
//
// Written from the cuBLAS documentation: column-major C = alpha op(A) op(B) + beta C, on
// OpenBLAS's sgemm. What a GPU's cuBLAS would refuse is refused with its status, and the
// reason goes to stderr (NVIDIA's library says nothing unless asked):
// - CUBLAS_STATUS_NOT_INITIALIZED for a null handle;
// - CUBLAS_STATUS_INVALID_VALUE for m, n or k < 0, an unknown operation, lda < max(1, rows
//   of A as stored), ldb likewise, ldc < max(1, m), null scalars, batchCount < 0.
// Tricks worth knowing:
// - CUBLAS_TF32_TENSOR_OP_MATH rounds A and B to TF32 (10 explicit mantissa bits, round to
//   nearest even) before the fp32 product, as the tensor cores take them: the TF32
//   tolerances of tests/test_gpu.cu are really exercised.
// - beta = 0 never reads C (it may hold NaN poison), as cuBLAS documents.
// - Every operand must lie inside one device allocation over the extent the call reads or
//   writes; a pointer past it is a fault, sticky like a kernel's (hooks.h).
// - The work goes through the runtime's stream (hooks.h): captured into a graph when the
//   handle's stream is capturing, with alpha and beta read at the call (host pointer mode).
// - A GEMM captured into a graph without a workspace of the caller's is refused: NVIDIA's
//   library would allocate one from its pool there, inside the graph. cublasSetStream_v2
//   drops the workspace, as NVIDIA's does, so it must be set again after each.
// - Each product's 2 m n k operations are counted as it runs (gkd_emu_count_flops): the
//   tests compare the GPU path's matmul work with the CPU path's.
// - cublasGemmEx and its strided batched form take bf16 or fp32 operands (A and B of one
//   type) and a bf16 or fp32 C, with fp32 accumulation (CUBLAS_COMPUTE_32F), as the
//   tensor cores do: bf16 operands widen exactly, the product and alpha op(A) op(B) +
//   beta C are fp32, and a bf16 C is rounded once, to nearest even (cuda_bf16.h). Only
//   the summation order differs from a GPU's. Other types or compute types are refused
//   with CUBLAS_STATUS_NOT_SUPPORTED.
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "include/cublas_v2.h"
#include "include/cuda_bf16.h"

struct cublasContext {
    cudaStream_t stream = nullptr;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
    void* workspace = nullptr;  // the caller's (cublasSetWorkspace_v2); cublasSetStream_v2 drops it, as cuBLAS does
};

namespace {

cublasStatus_t refuse(cublasStatus_t s, const std::string& why) {
    const char* name = s == CUBLAS_STATUS_INVALID_VALUE     ? "CUBLAS_STATUS_INVALID_VALUE"
                       : s == CUBLAS_STATUS_NOT_INITIALIZED ? "CUBLAS_STATUS_NOT_INITIALIZED"
                       : s == CUBLAS_STATUS_NOT_SUPPORTED   ? "CUBLAS_STATUS_NOT_SUPPORTED"
                                                            : "CUBLAS_STATUS_EXECUTION_FAILED";
    fprintf(stderr, "emulated cuBLAS: %s: %s\n", why.c_str(), name);
    return s;
}

float to_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u) return x;  // inf and NaN as they are
    u += 0xFFFu + ((u >> 13) & 1u);                   // round to nearest even at bit 13
    u &= 0xFFFFE000u;
    memcpy(&x, &u, 4);
    return x;
}

bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

struct Gemm {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, batch;
    long long sa, sb, sc;  // in elements of each operand's type
    float alpha, beta;
    const void *A, *B;
    void* C;
    bool ab_bf16, c_bf16;  // the operands' types: bf16, or fp32
    bool tf32;
    int batched;  // the strided batched calls', counted apart
};

// the entry of a column-major operand (fp32 or bf16) at element offset i, as a float
float load(const void* X, bool bf16, size_t i) {
    return bf16 ? __bfloat162float(((const __nv_bfloat16*)X)[i]) : ((const float*)X)[i];
}
// a column-major rows x cols operand copied compactly as floats: widened from bf16 (exact),
// or rounded to TF32
void widen_copy(std::vector<float>& out, const void* X, bool bf16, bool tf32, int rows, int cols, int ld) {
    out.resize((size_t)rows * cols);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            const float x = load(X, bf16, (size_t)c * ld + r);
            out[(size_t)c * rows + r] = tf32 ? to_tf32(x) : x;
        }
}

void run(void* p) {
    const Gemm& g = *(const Gemm*)p;
    const int ar = g.ta == CUBLAS_OP_N ? g.m : g.k, ac = g.ta == CUBLAS_OP_N ? g.k : g.m;
    const int br = g.tb == CUBLAS_OP_N ? g.k : g.n, bc = g.tb == CUBLAS_OP_N ? g.n : g.k;
    const size_t ab_size = g.ab_bf16 ? 2 : 4, c_size = g.c_bf16 ? 2 : 4;
    std::vector<float> a32, b32, c32;
    gkd_emu_count_flops(2.0 * g.m * g.n * g.k * g.batch, g.batched);
    for (int i = 0; i < g.batch; i++) {
        const float* A = (const float*)((const char*)g.A + i * g.sa * ab_size);
        const float* B = (const float*)((const char*)g.B + i * g.sb * ab_size);
        char* C_stored = (char*)g.C + i * g.sc * c_size;
        // C in fp32: in place, or a compact copy of a bf16 C (read only when beta != 0)
        float* C = (float*)C_stored;
        int ldc = g.ldc;
        if (g.c_bf16) {
            c32.assign((size_t)g.m * g.n, 0.0f);
            if (g.beta != 0.0f)
                for (int c = 0; c < g.n; c++)
                    for (int r = 0; r < g.m; r++) c32[(size_t)c * g.m + r] = load(C_stored, true, (size_t)c * g.ldc + r);
            C = c32.data();
            ldc = g.m;
        } else if (g.beta == 0.0f) {  // C is written, never read
            for (int c = 0; c < g.n; c++) memset(C + (size_t)c * g.ldc, 0, sizeof(float) * g.m);
        }
        if (g.k == 0 || g.alpha == 0.0f) {
            if (g.beta != 0.0f && g.beta != 1.0f)
                for (int c = 0; c < g.n; c++)
                    for (int r = 0; r < g.m; r++) C[(size_t)c * ldc + r] *= g.beta;
        } else {
            int lda = g.lda, ldb = g.ldb;
            if (g.tf32 || g.ab_bf16) {
                widen_copy(a32, A, g.ab_bf16, g.tf32 && !g.ab_bf16, ar, ac, g.lda);
                widen_copy(b32, B, g.ab_bf16, g.tf32 && !g.ab_bf16, br, bc, g.ldb);
                A = a32.data();
                B = b32.data();
                lda = ar;
                ldb = br;
            }
            cblas_sgemm(CblasColMajor, g.ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                        g.tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, g.m, g.n, g.k, g.alpha, A, lda, B, ldb,
                        g.beta, C, ldc);
        }
        if (g.c_bf16)  // one rounding, to nearest even
            for (int c = 0; c < g.n; c++)
                for (int r = 0; r < g.m; r++)
                    ((__nv_bfloat16*)C_stored)[(size_t)c * g.ldc + r] = __float2bfloat16(c32[(size_t)c * g.m + r]);
    }
}

// the floats an operand of rows x cols (column-major, leading dimension ld) spans
size_t extent(int rows, int cols, int ld) { return rows && cols ? (size_t)(cols - 1) * ld + rows : 0; }

cublasStatus_t gemm(const char* name, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float* alpha, const void* A, int lda, long long sa, const void* B, int ldb,
                    long long sb, const float* beta, void* C, int ldc, long long sc, int batch, bool ab_bf16 = false,
                    bool c_bf16 = false) {
    auto say = [&](const std::string& s) { return std::string(name) + ": " + s; };
    const bool batch_call = strcmp(name, "cublasSgemm_v2") != 0 && strcmp(name, "cublasGemmEx") != 0;
    if (!h) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, say("a null handle (cublasCreate_v2 first)"));
    if (!valid_op(ta) || !valid_op(tb)) return refuse(CUBLAS_STATUS_INVALID_VALUE, say("an unknown operation"));
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, say("m = " + std::to_string(m) + ", n = " + std::to_string(n) +
                                                       ", k = " + std::to_string(k) + ", batchCount = " +
                                                       std::to_string(batch) + ": none may be negative"));
    const int ar = ta == CUBLAS_OP_N ? m : k, br = tb == CUBLAS_OP_N ? k : n;
    if (lda < std::max(1, ar))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, say("lda = " + std::to_string(lda) + " < max(1, " +
                                                       (ta == CUBLAS_OP_N ? "m" : "k") + " = " + std::to_string(ar) +
                                                       ") for transa = " + (ta == CUBLAS_OP_N ? "N" : "T")));
    if (ldb < std::max(1, br))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, say("ldb = " + std::to_string(ldb) + " < max(1, " +
                                                       (tb == CUBLAS_OP_N ? "k" : "n") + " = " + std::to_string(br) +
                                                       ") for transb = " + (tb == CUBLAS_OP_N ? "N" : "T")));
    if (ldc < std::max(1, m))
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      say("ldc = " + std::to_string(ldc) + " < max(1, m = " + std::to_string(m) + ")"));
    if (!alpha || !beta) return refuse(CUBLAS_STATUS_INVALID_VALUE, say("a null alpha or beta"));
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (!h->workspace && gkd_emu_is_capturing(h->stream)) {
        const std::string why = say("captured into a graph with no workspace set (cublasSetWorkspace_v2 after "
                                    "cublasSetStream_v2): cuBLAS would allocate its own inside the graph");
        return refuse(CUBLAS_STATUS_EXECUTION_FAILED, why);  // the call fails; the capture, not the device
    }
    const int ac = ta == CUBLAS_OP_N ? k : m, bc = tb == CUBLAS_OP_N ? n : k;
    struct Operand { const char* which; const void* p; size_t elements, size; };
    const size_t ab_size = ab_bf16 ? 2 : 4, c_size = c_bf16 ? 2 : 4;
    const Operand ops[] = {{"A", A, k ? extent(ar, ac, lda) : 0, ab_size}, {"B", B, k ? extent(br, bc, ldb) : 0, ab_size},
                           {"C", C, extent(m, n, ldc), c_size}};
    const long long strides[] = {sa, sb, sc};
    for (int o = 0; o < 3; o++) {
        if (!ops[o].elements) continue;
        for (int i : {0, batch - 1}) {
            const char* p = (const char*)ops[o].p + i * strides[o] * ops[o].size;
            if (!gkd_emu_is_device_range(p, ops[o].elements * ops[o].size)) {
                const std::string why = say(std::string("operand ") + ops[o].which + (batch > 1 ? " of batch " + std::to_string(i) : "") +
                                            " spans " + std::to_string(ops[o].elements) + (ops[o].size == 2 ? " bf16" : " fp32") +
                                            " elements that are not all inside one device allocation (a wrong pointer, "
                                            "leading dimension or stride?)");
                gkd_emu_fault(why.c_str());
                return refuse(CUBLAS_STATUS_EXECUTION_FAILED, why);
            }
        }
    }
    Gemm* g = new Gemm{ta, tb, m, n, k, lda, ldb, ldc, batch, sa, sb, sc, *alpha, *beta, A, B, C, ab_bf16, c_bf16,
                       h->math == CUBLAS_TF32_TENSOR_OP_MATH, batch_call};
    const int e = gkd_emu_enqueue(h->stream, run, g, [](void* p) { delete (Gemm*)p; }, name);
    return e ? refuse(CUBLAS_STATUS_EXECUTION_FAILED, say("the runtime refused the work (error " + std::to_string(e) + ")"))
             : CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    if (!handle) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate_v2: a null handle pointer");
    *handle = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasDestroy_v2: a null handle");
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetMathMode: a null handle");
    if (mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_PEDANTIC_MATH && mode != CUBLAS_TF32_TENSOR_OP_MATH)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: a mode this emulation does not know");
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetStream_v2: a null handle");
    handle->stream = stream;
    handle->workspace = nullptr;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetWorkspace_v2: a null handle");
    if (bytes && !gkd_emu_is_device_range(workspace, bytes))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace_v2: the workspace is not " +
                                                       std::to_string(bytes) + " bytes of one device allocation");
    handle->workspace = bytes ? workspace : nullptr;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
    return gemm("cublasSgemm_v2", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long sa,
                                         const float* B, int ldb, long long sb, const float* beta, float* C, int ldc,
                                         long long sc, int batch) {
    return gemm("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
// The mixed-precision GEMMs: A and B of one type, bf16 or fp32, C bf16 or fp32, fp32 compute.
static cublasStatus_t gemm_ex_types(const char* name, cudaDataType at, cudaDataType bt, cudaDataType ct,
                                    cublasComputeType_t compute, bool& ab_bf16, bool& c_bf16) {
    auto known = [](cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF; };
    if (!known(at) || !known(bt) || !known(ct) || at != bt || compute != CUBLAS_COMPUTE_32F)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      std::string(name) + ": types A " + std::to_string(at) + ", B " + std::to_string(bt) + ", C " +
                          std::to_string(ct) + ", compute " + std::to_string(compute) +
                          ": this emulation takes A and B both CUDA_R_16BF or both CUDA_R_32F, C either, and "
                          "CUBLAS_COMPUTE_32F");
    ab_bf16 = at == CUDA_R_16BF;
    c_bf16 = ct == CUDA_R_16BF;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt,
                            int ldb, const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    bool ab_bf16 = false, c_bf16 = false;
    if (cublasStatus_t s = gemm_ex_types("cublasGemmEx", at, bt, ct, compute, ab_bf16, c_bf16)) return s;
    return gemm("cublasGemmEx", h, ta, tb, m, n, k, (const float*)alpha, A, lda, 0, B, ldb, 0, (const float*)beta, C,
                ldc, 0, 1, ab_bf16, c_bf16);
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType at, int lda,
                                          long long sa, const void* B, cudaDataType bt, int ldb, long long sb,
                                          const void* beta, void* C, cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t compute, cublasGemmAlgo_t) {
    bool ab_bf16 = false, c_bf16 = false;
    if (cublasStatus_t s = gemm_ex_types("cublasGemmStridedBatchedEx", at, bt, ct, compute, ab_bf16, c_bf16)) return s;
    return gemm("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, (const float*)alpha, A, lda, sa, B, ldb, sb,
                (const float*)beta, C, ldc, sc, batch, ab_bf16, c_bf16);
}
}
