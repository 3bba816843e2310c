// cuda/precision.cuh — the CUDA path's two precisions, and the storage types behind them.
//
// --precision fp32 stores everything in fp32 (the parity mode the tests hold to the CPU
// path). --precision bf16 stores the working weights, the activations and their gradients,
// the KV cache and the teacher in bf16, and keeps in fp32 what needs its range or its
// mantissa (docs/cuda.md says why, one by one): the master weights, AdamW's moments, the
// weight gradients, LayerNorm's statistics, softmax's arithmetic, the logits and the loss.
//
// Every kernel that touches a stored activation is a template over its storage type T
// (float or bf16) and computes in fp32: it loads with to_float and stores with
// from_float<T>, the one rounding per stored value. So one binary runs either precision,
// and the fp32 instance is the same code the fp32 path always ran.
//
// Tricks worth knowing:
// - bf16 is a float's top half: widening is exact, narrowing rounds to nearest even
//   (__float2bfloat16, the hardware's cvt.rn.bf16.f32; the emulator's cuda_bf16.h does the
//   same bit for bit, and tests/test_gpu.cu checks it against a reference).
// - cuda_type<T>() names T to cuBLAS: the bf16 GEMMs are cublasGemmEx calls with fp32
//   accumulation (CUBLAS_COMPUTE_32F), on the tensor cores.
#pragma once
#include <cuda_bf16.h>
#include <type_traits>

using bf16 = __nv_bfloat16;

enum class Precision { fp32, bf16 };
inline const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

__host__ __device__ inline float to_float(float x) { return x; }
__host__ __device__ inline float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T>
__host__ __device__ inline T from_float(float x);
template <>
__host__ __device__ inline float from_float<float>(float x) { return x; }
template <>
__host__ __device__ inline bf16 from_float<bf16>(float x) { return __float2bfloat16(x); }

// not_deduced<X>: X, in a parameter that template deduction skips (so that a nullptr
// argument, or a pointer of a derived type, is taken as is)
template <typename X>
struct not_deduced_t { using type = X; };
template <typename X>
using not_deduced = typename not_deduced_t<X>::type;

template <typename T>
constexpr bool is_fp32() { return std::is_same<T, float>::value; }
template <typename T>
constexpr cudaDataType cuda_type() { return is_fp32<T>() ? CUDA_R_32F : CUDA_R_16BF; }
