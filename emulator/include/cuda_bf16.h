// emulator/include/cuda_bf16.h — the emulated build's <cuda_bf16.h>: the bfloat16 type and
// the two conversions gkd uses, with the hardware's results bit for bit.
//
// bf16 is a float's top 16 bits: sign, the 8-bit exponent, 7 mantissa bits. So widening is
// exact (the bits shifted up), and narrowing rounds away 16 bits:
// - to nearest, ties to even, as the GPU's cvt.rn.bf16.f32 does: add 0x7FFF plus the bit
//   that will be the last kept one, then drop the low 16 bits. A carry out of the mantissa
//   bumps the exponent, which is also right: the largest finite values round to infinity,
//   subnormals to the nearest subnormal or to the smallest normal;
// - NaN stays NaN: the rounding's carry could turn a NaN's low payload into infinity, so
//   a NaN becomes the canonical quiet NaN 0x7FFF, as the hardware's conversion returns it.
// tests/test_gpu.cu checks both against an independent reference over a sweep of floats.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    unsigned short __x;  // the bits, as CUDA's own type names them
};

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        h.__x = 0x7FFF;
        return h;
    }
    u += 0x7FFFu + ((u >> 16) & 1u);
    h.__x = (unsigned short)(u >> 16);
    return h;
}

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
