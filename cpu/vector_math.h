// cpu/vector_math.h — exp and tanh in float precision that the compiler vectorizes.
//
// GPU twin: CUDA's own expf/tanhf (cuda/layers.cuh, cuda/loss.cuh); the two paths agree
// to the tolerance the GPU tests state, not bit for bit.
//
// Tricks worth knowing:
// - libm's expf and tanhf are scalar calls, one per element of GELU and of every softmax.
//   These are plain arithmetic on floats and ints, so a loop calling them becomes
//   SIMD without -ffast-math (which gkd avoids: NaN checks and exp/log stay exact).
// - The double overloads are libm's: the finite-difference tests run in fp64 and want
//   every digit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>


// exp and tanh in float precision, written so that the loops calling them vectorize (libm's
// expf and tanhf are scalar calls).
// exp: x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial
// (relative error below 2e-7, about 2 ulp), times 2^k built from its exponent bits.
// The double versions, used by the finite-difference tests, stay libm's.
inline float exp_fast(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    // k = round(x / ln2); truncating a positive number floors it, and (unlike std::floor
    // without -ffast-math) vectorizes
    int32_t ki = (int32_t)(x * 1.44269504088896341f + 128.5f) - 128;
    float k = (float)ki;
    float r = x - k * 0.693145751953125f - k * 1.42860682030941723e-6f;  // ln2 in two parts
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}
inline double exp_fast(double x) { return std::exp(x); }
// tanh from exp: absolute error about 1e-7, which is what GELU's 1 + tanh needs.
inline float tanh_fast(float x) {
    x = std::min(std::max(x, -9.0f), 9.0f);
    float e = exp_fast(2.0f * x);
    return (e - 1.0f) / (e + 1.0f);
}
inline double tanh_fast(double x) { return std::tanh(x); }
