// emulator/simt.h — CUDA's execution model on the CPU, strictly: the threads of a block
// as fibers, warps of 32, block barriers and warp shuffles that check who meets them.
//
// What a kernel sees: threadIdx, blockIdx, blockDim, gridDim, __syncthreads() and
// __shfl_xor_sync, with CUDA's types (dim3, uint3, float4). gpu::launch (cuda/common.cuh)
// hands a kernel to emu::launch, which checks the launch as a GPU would and runs it.
//
// Tricks worth knowing:
// - Each thread of a block is a Boost.Context fiber (a user-space stack switch, no
//   syscall). The fibers live in a pool per OS thread and run one CUDA thread after
//   another, so a launch of a million threads creates none. Whole blocks are shared out
//   among the OpenMP threads; a block runs start to end on one of them.
// - Between two barriers the warps run one at a time, each as far as it can go (its lanes
//   interleave only at shuffles), in an order: forward, or reversed. A read of shared
//   memory that another warp writes without a barrier between them then sees the write in
//   one order and not in the other. Race mode (runtime.h) runs every launch in both orders
//   and compares every byte it wrote.
// - A barrier completes only when every thread of the block waits at the same one (file
//   and line); a thread at another barrier, or one that exited while others wait, fails
//   the launch naming the kernel and both places. A shuffle completes when every lane of
//   its mask waits at it with the same mask; anything else fails likewise.
// - Static __shared__ arrays are thread_local (one block at a time per OS thread), and
//   both they and dynamic shared memory are poisoned (NaN) at each block's start: the
//   build's source preparation (prepare_sources.py) adds the call that does it.
#pragma once
#include <boost/context/fiber.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

// ---- CUDA's vector types, as the device headers define them

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {  // 16-byte aligned: a misaligned load is caught (-fsanitize=alignment)
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

// CUDA's device math that host C++ spells differently or not at all
using std::max;
using std::min;
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

namespace emu {

constexpr int WARP = 32;
constexpr size_t FIBER_STACK = 256 * 1024;
// The poison of fresh device and shared memory: NaN read as a float or as a double, a huge
// index read as an int.
constexpr uint32_t POISON = 0x7FF7FFF7u;
inline void poison(void* p, size_t bytes) {
    unsigned char pattern[4];
    memcpy(pattern, &POISON, 4);
    unsigned char* b = (unsigned char*)p;
    unsigned char* end = b + bytes;
    for (; b < end && ((uintptr_t)b & 3); b++) *b = pattern[(uintptr_t)b & 3];
    for (; b + 4 <= end; b += 4) memcpy(b, &POISON, 4);
    for (; b < end; b++) *b = pattern[(uintptr_t)b & 3];
}

enum class Wait { Running, Barrier, Shuffle, Exited };

// One CUDA thread of the block being run.
struct SimThread {
    uint3 idx{};
    int rank = 0;              // threadIdx linearised, x fastest
    Wait state = Wait::Running;
    const char* file = "";     // where it waits: a barrier's or a shuffle's call site
    int line = 0;
    // a shuffle in progress: this lane's mask, source lane, value and result (raw bytes)
    unsigned mask = 0;
    int source = 0;
    unsigned char value[8] = {}, result[8] = {};
};

// A launch as the threads see it.
struct Kernel {
    const char* name;                 // "gpu::fused_loss_kernel"
    void (*body)(const void* params);  // runs the kernel for the current thread
    const void* params;
    dim3 grid, block;
    size_t shared_bytes;
    std::vector<const void*> pointers;  // every word of the arguments that may be a pointer: what it can write
    const void* id = nullptr;           // the kernel function: its attributes (kernel_attributes)
    struct Slot {
        void** at;        // where a pointer-sized word of the arguments lives (in the launch's own copy)
        bool writable;    // a pointer to non-const memory, or a word of a struct
    };
    std::vector<Slot> slots;            // what runtime.h's relocation of carved tensors may rewrite
};

// After a block's dynamic shared memory: poisoned, and checked when the block ends.
constexpr size_t DYNAMIC_SHARED_GUARD = 256;

struct Fiber;
// The block an OS thread is running now.
struct Block {
    const Kernel* kernel = nullptr;
    uint3 idx{};
    std::vector<SimThread> threads;
    std::vector<Fiber*> fibers;
    uint64_t epoch = 0;          // a new number per block run: when shared memory is poisoned again
    std::string error;           // the first fault seen in this block
    char* dynamic_shared = nullptr;  // the launch's bytes, then DYNAMIC_SHARED_GUARD of poison
    size_t static_shared = 0;        // the bytes of the static __shared__ arrays this block reached
};

struct Fiber {
    boost::context::fiber self, back;  // the fiber and, while it runs, the scheduler's continuation
    SimThread* thread = nullptr;
    Block* block = nullptr;
};

inline thread_local SimThread* current_thread = nullptr;
inline thread_local Block* current_block = nullptr;
inline thread_local Fiber* current_fiber = nullptr;
inline thread_local uint64_t epochs = 0;

// The fibers of this OS thread, made once and reused by every block it runs.
struct FiberPool {
    std::vector<Fiber*> fibers;
    Fiber* get(size_t i) {
        while (fibers.size() <= i) {
            Fiber* f = new Fiber;
            f->self = boost::context::fiber(std::allocator_arg, boost::context::protected_fixedsize_stack(FIBER_STACK),
                                            [f](boost::context::fiber&& back) {
                                                f->back = std::move(back);
                                                for (;;) {
                                                    f->block->kernel->body(f->block->kernel->params);
                                                    f->thread->state = Wait::Exited;
                                                    f->back = std::move(f->back).resume();
                                                }
                                                return std::move(f->back);
                                            });
            fibers.push_back(f);
        }
        return fibers[i];
    }
    // after a faulted block: its fibers are stopped mid-kernel; unwind them and start afresh
    void reset() {
        for (Fiber* f : fibers) delete f;  // ~fiber unwinds a suspended stack
        fibers.clear();
    }
};
inline thread_local FiberPool pool;

// The current thread gives the CPU back to its block's scheduler until it may go on.
inline void yield_to_scheduler() {
    Fiber* f = current_fiber;
    f->back = std::move(f->back).resume();
}

inline void fault(const std::string& what) {
    Block* b = current_block;
    if (b->error.empty()) b->error = what;
}
inline std::string thread_name(const SimThread& t) {
    return "thread (" + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) + "," + std::to_string(t.idx.z) + ")";
}
inline std::string block_name(const Block& b) {
    return "block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) + ")";
}
inline std::string site(const SimThread& t) { return std::string(t.file) + ":" + std::to_string(t.line); }

// ---- shared memory: poisoned at each block's start

// A static __shared__ array declared at this point of a kernel (prepare_sources.py puts
// the call after each declaration): the block's first thread to get here poisons it.
inline void shared_declared(void* p, size_t bytes) {
    static thread_local std::unordered_map<void*, uint64_t> seen;
    uint64_t& e = seen[p];
    if (e != current_block->epoch) {
        e = current_block->epoch;
        poison(p, bytes);
        current_block->static_shared += bytes;  // counts toward the block's limit with the dynamic bytes
    }
}
// extern __shared__: the launch's dynamic shared memory, 16-byte aligned
inline void* dynamic_shared() { return current_block->dynamic_shared; }

// ---- the block scheduler

inline void resume(Block& b, int i) {
    Fiber* f = b.fibers[i];
    f->thread = &b.threads[i];
    f->block = &b;
    current_thread = f->thread;
    current_fiber = f;
    f->self = std::move(f->self).resume();
}

inline std::string lanes_text(const std::vector<int>& lanes) {
    std::string s;
    for (size_t i = 0; i < lanes.size() && i < 4; i++) s += (i ? "," : "") + std::to_string(lanes[i]);
    if (lanes.size() > 4) s += ",... (" + std::to_string(lanes.size()) + " lanes)";
    return s;
}

// Completes the shuffle that warp w's waiting lanes are at, or says why it cannot.
inline bool complete_shuffle(Block& b, int first, int count) {
    SimThread* waiting = nullptr;
    for (int l = 0; l < count; l++)
        if (b.threads[first + l].state == Wait::Shuffle) { waiting = &b.threads[first + l]; break; }
    if (!waiting) return false;
    const unsigned mask = waiting->mask;
    const int warp = first / WARP;
    for (int l = 0; l < count; l++) {
        SimThread& t = b.threads[first + l];
        const bool in_mask = (mask >> l) & 1u;
        if (t.state == Wait::Shuffle && (t.file != waiting->file || t.line != waiting->line)) {
            fault("warp " + std::to_string(warp) + ": lane " + std::to_string(l) + " waits at the shuffle at " + site(t) +
                  ", lane " + std::to_string(waiting->rank - first) + " at the one at " + site(*waiting));
            return false;
        }
        if (t.state == Wait::Shuffle && t.mask != mask) {
            char m1[16], m2[16];
            snprintf(m1, sizeof m1, "0x%08x", t.mask);
            snprintf(m2, sizeof m2, "0x%08x", mask);
            fault("__shfl_xor_sync at " + site(t) + ": the lanes' masks disagree (lane " + std::to_string(l) + ": " + m1 +
                  ", lane " + std::to_string(waiting->rank - first) + ": " + m2 + ")");
            return false;
        }
        if (in_mask && t.state != Wait::Shuffle) {
            std::vector<int> missing;
            for (int k = 0; k < WARP; k++)
                if ((mask >> k) & 1u) {
                    if (k >= count) { missing.push_back(k); continue; }
                    if (b.threads[first + k].state != Wait::Shuffle) missing.push_back(k);
                }
            const SimThread& m = b.threads[first + missing[0]];
            std::string where = missing[0] >= count ? "does not exist (the block has " + std::to_string(b.threads.size()) + " threads)"
                              : m.state == Wait::Exited ? "has exited"
                              : "waits at __syncthreads() at " + site(m);
            char mk[16];
            snprintf(mk, sizeof mk, "0x%08x", mask);
            fault("__shfl_xor_sync(" + std::string(mk) + ") at " + site(*waiting) + " in warp " + std::to_string(warp) +
                  ": lanes " + lanes_text(missing) + " of its mask never arrive (lane " + std::to_string(missing[0]) + " " +
                  where + "): a shuffle in a branch that only part of the mask takes");
            return false;
        }
    }
    if (count < WARP && (mask >> count) != 0) {
        fault("__shfl_xor_sync at " + site(*waiting) + ": the mask names lanes past the block's last thread");
        return false;
    }
    for (int l = 0; l < count; l++) {
        SimThread& t = b.threads[first + l];
        if (t.state != Wait::Shuffle) continue;
        if (!((mask >> t.source) & 1u) || t.source >= count) {
            fault("__shfl_xor_sync at " + site(t) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(t.source) +
                  ", which is not in the mask");
            return false;
        }
        memcpy(t.result, b.threads[first + t.source].value, 8);
    }
    for (int l = 0; l < count; l++)
        if (b.threads[first + l].state == Wait::Shuffle) b.threads[first + l].state = Wait::Running;
    return true;
}

// Runs warp w until each of its lanes waits at a barrier or has exited.
inline bool run_warp(Block& b, int w, bool reversed) {
    const int first = w * WARP, count = std::min<int>(WARP, (int)b.threads.size() - first);
    for (;;) {
        for (int k = 0; k < count; k++) {
            const int l = reversed ? count - 1 - k : k;
            if (b.threads[first + l].state == Wait::Running) resume(b, first + l);
            if (!b.error.empty()) return false;
        }
        bool any_shuffle = false;
        for (int l = 0; l < count; l++) any_shuffle |= b.threads[first + l].state == Wait::Shuffle;
        if (!any_shuffle) return true;
        if (!complete_shuffle(b, first, count)) return false;
    }
}

// Runs one block to its end; false with b.error set when it faulted.
inline bool run_block(Block& b, bool reversed) {
    const dim3 bd = b.kernel->block;
    const int n = (int)(bd.x * bd.y * bd.z), warps = (n + WARP - 1) / WARP;
    b.threads.assign(n, SimThread{});
    b.fibers.resize(n);
    for (int i = 0; i < n; i++) {
        SimThread& t = b.threads[i];
        t.rank = i;
        t.idx = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        b.fibers[i] = pool.get(i);
    }
    b.epoch = ++epochs;
    b.error.clear();
    b.static_shared = 0;
    poison(b.dynamic_shared, b.kernel->shared_bytes + DYNAMIC_SHARED_GUARD);
    current_block = &b;
    for (;;) {  // one phase: from one barrier to the next
        for (int k = 0; k < warps; k++)
            if (!run_warp(b, reversed ? warps - 1 - k : k, reversed)) return false;
        const SimThread* waiting = nullptr;
        const SimThread* exited = nullptr;
        for (const SimThread& t : b.threads) {
            if (t.state == Wait::Barrier && !waiting) waiting = &t;
            if (t.state == Wait::Exited && !exited) exited = &t;
        }
        if (!waiting) return true;  // every thread has exited
        if (exited) {
            fault(thread_name(*exited) + " exited while " + thread_name(*waiting) + " waits at __syncthreads() at " +
                  site(*waiting) + ": a barrier that not every thread of the block reaches");
            return false;
        }
        for (const SimThread& t : b.threads)
            if (t.file != waiting->file || t.line != waiting->line) {
                fault(thread_name(t) + " waits at __syncthreads() at " + site(t) + " and " + thread_name(*waiting) +
                      " at the one at " + site(*waiting) + ": the block's threads are at different barriers");
                return false;
            }
        for (SimThread& t : b.threads) t.state = Wait::Running;
    }
}

// ---- what kernels call

inline void syncthreads(const char* file, int line) {
    SimThread* t = current_thread;
    t->state = Wait::Barrier;
    t->file = file;
    t->line = line;
    yield_to_scheduler();
}

template <typename T>
inline T shfl_xor(unsigned mask, T value, int lane_mask, int width, const char* file, int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "__shfl_xor_sync: a 1-8 byte value");
    SimThread* t = current_thread;
    const int lane = t->rank % WARP;
    if (!((mask >> lane) & 1u)) {
        char m[16];
        snprintf(m, sizeof m, "0x%08x", mask);
        fault("__shfl_xor_sync at " + std::string(file) + ":" + std::to_string(line) + ": lane " + std::to_string(lane) +
              " calls it with mask " + m + ", which leaves it out");
        t->state = Wait::Shuffle;  // the scheduler sees the fault and stops the block
        yield_to_scheduler();
    }
    if (width != WARP) fault("__shfl_xor_sync: only width 32 is emulated");
    t->mask = mask;
    t->source = lane ^ (lane_mask & (WARP - 1));
    memset(t->value, 0, 8);
    memcpy(t->value, &value, sizeof(T));
    t->file = file;
    t->line = line;
    t->state = Wait::Shuffle;
    yield_to_scheduler();
    T out;
    memcpy(&out, t->result, sizeof(T));
    return out;
}

// ---- __launch_bounds__ and the dynamic shared memory opt-in, per kernel

struct KernelAttributes {
    int max_threads = 1024;          // __launch_bounds__'s first argument
    size_t max_dynamic_shared = 48 * 1024;  // cudaFuncAttributeMaxDynamicSharedMemorySize
    size_t static_shared = 0;        // the most static shared memory a block of it has reached so far
    bool whole_allocations = false;  // it walks whole allocations (AdamW's, the norm's): no carved tensor is moved for it
};
inline std::unordered_map<const void*, KernelAttributes>& kernel_attributes() {
    static std::unordered_map<const void*, KernelAttributes> a;
    return a;
}
// cuda/ registers the kernels that walk a whole carved allocation (GKD_WALKS_WHOLE_ALLOCATIONS)
inline bool register_whole_allocations(const void* kernel) {
    kernel_attributes()[kernel].whole_allocations = true;
    return true;
}
// prepare_sources.py registers each __launch_bounds__ after its kernel's definition
inline bool register_launch_bounds(const void* kernel, int max_threads) {
    kernel_attributes()[kernel].max_threads = max_threads;
    return true;
}

}  // namespace emu

// what kernel code reads and calls
#define threadIdx (::emu::current_thread->idx)
#define blockIdx (::emu::current_block->idx)
#define blockDim (::emu::current_block->kernel->block)
#define gridDim (::emu::current_block->kernel->grid)
constexpr int warpSize = 32;
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) { emu::syncthreads(file, line); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    return emu::shfl_xor(mask, value, lane_mask, width, file, line);
}
#define EMU_LAUNCH_BOUNDS(kernel, max_threads) \
    [[maybe_unused]] static const bool emu_launch_bounds_##kernel = ::emu::register_launch_bounds((const void*)&kernel, max_threads);
