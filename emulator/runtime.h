// emulator/runtime.h — the CUDA runtime API that gkd uses, on the CPU: device memory with
// guard zones and poison, errors as a GPU reports them, streams, graph capture and replay,
// events, and the kernel launch with race mode.
//
// Tricks worth knowing:
// - Each cudaMalloc is its own mmap: an inaccessible guard zone on each side, the data
//   256-byte aligned and ending as near the second guard as alignment allows (guards of
//   16 KB), the slack
//   around it filled with poison. A kernel that steps past its buffer hits a guard page
//   (a read or a write: the SIGSEGV handler names the kernel and the allocation) or the
//   slack (a read sees NaN; a write is found by the check after each launch).
// - Fresh device memory is poisoned (NaN as float and as double): a read of an element
//   nobody wrote shows in the results.
// - Race mode (on unless GKD_EMU_RACE=0): every launch runs twice, its blocks' threads
//   forward and then reversed (simt.h), and its blocks in grid order and then the
//   opposite one, from the same memory. Device memory is write-
//   protected during a launch; the first write to a page saves the page (SIGSEGV, then
//   the page is writable), so only what the kernel wrote is compared, byte for byte.
// - The device is synchronous: work runs when it is enqueued, except on a stream being
//   captured, where it is recorded (a kernel's arguments by value, as a GPU captures
//   them) and replayed by cudaGraphLaunch. What a GPU refuses during capture (an
//   allocation, a synchronising call, work on the legacy stream) is refused here.
// - A fault inside a kernel (a barrier or shuffle error, a race, an overrun) is sticky as
//   on a GPU: every later call returns it, and cudaGetErrorString gives its full story
//   (tests/test_emulator.cu provokes each in a child process of its own).
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <functional>
#include <map>

#include "hooks.h"
#include "simt.h"

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorIllegalState = 401,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureImplicit = 906,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1,
                             cudaStreamCaptureModeRelaxed = 2 };
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrClockRate = 13, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaGraphInstantiateFlags { cudaGraphInstantiateFlagAutoFreeOnLaunch = 1 };

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin;
    int warpSize, maxThreadsPerBlock, major, minor, multiProcessorCount;
};

struct CUstream_st;
struct CUgraph_st;
struct CUgraphExec_st;
struct CUevent_st;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;
typedef CUevent_st* cudaEvent_t;

namespace emu {

constexpr size_t PAGE = 4096;
constexpr size_t GUARD = 4 * PAGE;  // inaccessible on each side of an allocation
constexpr size_t ALIGNMENT = 256;  // cudaMalloc's
constexpr size_t DEVICE_BYTES = (size_t)64 << 30;  // what the emulated device says it has
constexpr size_t SHARED_DEFAULT = 48 * 1024, SHARED_OPTIN = 227 * 1024;  // per block, as on sm_90

// ---- errors

struct Errors {
    cudaError_t last = cudaSuccess, sticky = cudaSuccess;
    std::string message;  // the story of the last error
};
inline Errors& errors() { static Errors e; return e; }
inline const char* error_name(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorIllegalState: return "operation not permitted when stream is capturing";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorMisalignedAddress: return "misaligned address";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
        case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
        case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
        default: return "CUDA error";
    }
}
// Records an error: sticky ones (faults inside kernels) stay for the rest of the process, as a GPU context's.
inline cudaError_t fail(cudaError_t e, const std::string& story, bool sticky = false) {
    Errors& s = errors();
    s.last = e;
    s.message = std::string(error_name(e)) + ": " + story;
    if (sticky) s.sticky = e;
    return e;
}

// ---- device memory

struct Allocation {
    char* map = nullptr;    // guard page, pages, guard page
    size_t map_bytes = 0;
    char* pages = nullptr;  // the accessible pages
    size_t page_bytes = 0;
    char* data = nullptr;   // what cudaMalloc returned
    size_t bytes = 0;
    // race mode: each written page as it was before the launch, and after its first order
    char* original = nullptr;
    char* first_order = nullptr;
    std::vector<uint8_t> page_state;
    // a carved tensor's copy for one launch (relocation, below): "tensor qkv of the
    // activations", which every message about this allocation names
    char label[128] = {};
};
enum : uint8_t { SAVED = 1, WRITTEN_FIRST = 2, WRITTEN_SECOND = 4 };

struct Memory {
    std::map<uintptr_t, Allocation*> by_data;  // by data address
    std::vector<Allocation*> sorted;           // by pages, for the signal handler (no locks there)
    size_t bytes_now = 0;
    void resort() {
        sorted.clear();
        for (auto& kv : by_data) sorted.push_back(kv.second);
        std::sort(sorted.begin(), sorted.end(), [](Allocation* a, Allocation* b) { return a->map < b->map; });
    }
};
inline Memory& memory() { static Memory m; return m; }

// The floating-point operations of the GEMMs the emulated cuBLAS has run (2 m n k a
// product): cublasSgemm_v2's (gkd's matmuls with a weight) and the strided batched ones'
// (attention's), apart: what the tests hold the GPU path's work to.
inline double& matmul_flops() { static double f = 0; return f; }
inline double& batched_matmul_flops() { static double f = 0; return f; }
// The bytes every copy from the device to the host has moved: what the tests hold
// speculative sampling's traffic to.
inline size_t& bytes_to_host() { static size_t n = 0; return n; }

// the allocation whose data range holds [p, p + bytes), or null
inline Allocation* allocation_of(const void* p, size_t bytes = 1) {
    Memory& m = memory();
    auto it = m.by_data.upper_bound((uintptr_t)p);
    if (it == m.by_data.begin()) return nullptr;
    --it;
    Allocation* a = it->second;
    const char* c = (const char*)p;
    if (c >= a->data && c + bytes <= a->data + a->bytes) return a;
    return nullptr;
}
// the allocation whose mapping (guards included) holds p: for the signal handler
inline Allocation* mapping_of(const void* p) {
    const std::vector<Allocation*>& v = memory().sorted;
    size_t lo = 0, hi = v.size();
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v[mid]->map + v[mid]->map_bytes <= (const char*)p) lo = mid + 1;
        else hi = mid;
    }
    if (lo < v.size() && (const char*)p >= v[lo]->map && (const char*)p < v[lo]->map + v[lo]->map_bytes) return v[lo];
    return nullptr;
}

// the first byte of the slack around a's data that is no longer poison, or null
inline const char* overrun_in_slack(const Allocation* a) {
    unsigned char pattern[4];
    memcpy(pattern, &POISON, 4);
    for (const char* c = a->pages; c < a->data; c++)
        if ((unsigned char)*c != pattern[(uintptr_t)c & 3]) return c;
    for (const char* c = a->data + a->bytes; c < a->pages + a->page_bytes; c++)
        if ((unsigned char)*c != pattern[(uintptr_t)c & 3]) return c;
    return nullptr;
}

// ---- race mode: which pages a launch wrote, and what they held

struct RaceTracking {
    std::atomic<bool> on{false};
    int order = 0;  // 0: the first order (forward), 1: the second (reversed)
    std::atomic_flag lock = ATOMIC_FLAG_INIT;
};
inline RaceTracking& race() { static RaceTracking r; return r; }
inline bool race_mode() {
    static const bool on = !(getenv("GKD_EMU_RACE") && std::string(getenv("GKD_EMU_RACE")) == "0");
    return on;
}

inline void write_text(const char* s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

inline void on_segv(int sig, siginfo_t* info, void*) {
    char* addr = (char*)info->si_addr;
    Allocation* a = mapping_of(addr);
    RaceTracking& r = race();
    if (a && r.on.load() && addr >= a->pages && addr < a->pages + a->page_bytes) {
        // a first write to a page in race mode: keep what it held, then let the write happen
        const size_t page = (size_t)(addr - a->pages) / PAGE;
        while (r.lock.test_and_set(std::memory_order_acquire)) {}
        uint8_t& s = a->page_state[page];
        char* p = a->pages + page * PAGE;
        if (!(s & SAVED)) { memcpy(a->original + page * PAGE, p, PAGE); s |= SAVED; }
        s |= r.order == 0 ? WRITTEN_FIRST : WRITTEN_SECOND;
        mprotect(p, PAGE, PROT_READ | PROT_WRITE);
        r.lock.clear(std::memory_order_release);
        return;
    }
    char text[512];
    const char* kernel = current_block && current_block->kernel ? current_block->kernel->name : nullptr;
    if (a) {
        const long long past = addr >= a->data + a->bytes ? (long long)(addr - (a->data + a->bytes)) : -1;
        const long long before = addr < a->data ? (long long)(a->data - addr) : -1;
        snprintf(text, sizeof text,
                 "gpu emulator: %s%s: out-of-bounds access at %p, %lld bytes %s the %zu-byte device allocation at %p "
                 "(a guard page)%s%s\n",
                 kernel ? "kernel " : "outside any kernel (cuBLAS or a copy)", kernel ? kernel : "", (void*)addr,
                 past >= 0 ? past : before, past >= 0 ? "past the end of" : "before", a->bytes, (void*)a->data,
                 a->label[0] ? ": " : "", a->label);
        write_text(text);
        _exit(1);
    }
    if (kernel) {
        snprintf(text, sizeof text, "gpu emulator: kernel %s: invalid access at %p, in no device allocation\n", kernel,
                 (void*)addr);
        write_text(text);
        _exit(1);
    }
    signal(sig, SIG_DFL);  // not ours: crash as the program would
}

inline void install_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

inline cudaError_t allocate(void** out, size_t bytes) {
    install_handler();
    *out = nullptr;
    if (bytes == 0) return cudaSuccess;
    const size_t rounded = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    const size_t page_bytes = (rounded + PAGE - 1) / PAGE * PAGE;
    Allocation* a = new Allocation;
    a->map_bytes = page_bytes + 2 * GUARD;
    void* m = mmap(nullptr, a->map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { delete a; return fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) + " bytes"); }
    a->map = (char*)m;
    a->pages = a->map + GUARD;
    a->page_bytes = page_bytes;
    mprotect(a->pages, page_bytes, PROT_READ | PROT_WRITE);
    a->data = a->pages + page_bytes - rounded;
    a->bytes = bytes;
    poison(a->pages, page_bytes);
    Memory& mem = memory();
    mem.by_data[(uintptr_t)a->data] = a;
    mem.resort();
    mem.bytes_now += bytes;
    *out = a->data;
    return cudaSuccess;
}

inline void forget_tensors_in(const char* data, size_t bytes);
inline cudaError_t release(void* p) {
    if (!p) return cudaSuccess;
    Memory& mem = memory();
    auto it = mem.by_data.find((uintptr_t)p);
    if (it == mem.by_data.end()) return fail(cudaErrorInvalidDevicePointer, "cudaFree of a pointer cudaMalloc did not return");
    Allocation* a = it->second;
    forget_tensors_in(a->data, a->bytes);  // the names go with the memory: a later allocation there is not carved
    mem.by_data.erase(it);
    mem.resort();
    mem.bytes_now -= a->bytes;
    munmap(a->map, a->map_bytes);
    if (a->original) munmap(a->original, a->page_bytes);
    if (a->first_order) munmap(a->first_order, a->page_bytes);
    delete a;
    return cudaSuccess;
}

// After work ran: a write into the slack around an allocation is an overrun (all of them,
// or those a kernel could reach).
inline bool check_slack(const char* who, const std::vector<Allocation*>* only = nullptr) {
    std::vector<Allocation*> all;
    if (!only) {
        for (auto& kv : memory().by_data) all.push_back(kv.second);
        only = &all;
    }
    for (Allocation* a : *only) {
        if (const char* c = overrun_in_slack(a)) {
            const bool after = c >= a->data + a->bytes;
            // how far the writes reach past the end (the last changed byte), or before the start (the first)
            long long off = (long long)(a->data - c);
            if (after) {
                unsigned char pattern[4];
                memcpy(pattern, &POISON, 4);
                const char* last = a->pages + a->page_bytes - 1;
                while (last > c && (unsigned char)*last == pattern[(uintptr_t)last & 3]) last--;
                off = (long long)(last - (a->data + a->bytes)) + 1;
            }
            poison(a->pages, a->data - a->pages);
            poison(a->data + a->bytes, a->pages + a->page_bytes - (a->data + a->bytes));
            fail(cudaErrorIllegalAddress,
                 std::string(who) + " wrote " + std::to_string(off) + (after ? " bytes past the end of" : " bytes before") +
                     " the " + std::to_string(a->bytes) + "-byte device allocation at " +
                     std::to_string((uintptr_t)a->data) + (a->label[0] ? std::string(": ") + a->label : "") +
                     " (an index off by one?)",
                 true);
            return false;
        }
    }
    return true;
}

// ---- launching a grid

// What a block may hold in shared memory, static and dynamic together: 48 KB, or the
// opt-in's 227 KB for a kernel whose dynamic limit was raised (cudaFuncSetAttribute).
inline size_t shared_limit(const KernelAttributes& at) {
    return at.max_dynamic_shared > SHARED_DEFAULT ? SHARED_OPTIN : SHARED_DEFAULT;
}
// After a block: its static and dynamic shared memory within the limit, and the guard
// after the dynamic bytes still poison. "" when both hold.
inline std::string shared_memory_fault(const Block& b, const KernelAttributes& at) {
    const Kernel& k = *b.kernel;
    if (b.static_shared + k.shared_bytes > shared_limit(at))
        return std::to_string(b.static_shared) + " bytes of static shared memory and " + std::to_string(k.shared_bytes) +
               " of dynamic, more than the " + std::to_string(shared_limit(at)) + " a block may hold";
    unsigned char pattern[4];
    memcpy(pattern, &POISON, 4);
    const char* guard = b.dynamic_shared + k.shared_bytes;
    for (size_t i = 0; i < DYNAMIC_SHARED_GUARD; i++)
        if ((unsigned char)guard[i] != pattern[(uintptr_t)(guard + i) & 3])
            return "a write at byte " + std::to_string(i) + " past the end of its " + std::to_string(k.shared_bytes) +
                   " bytes of dynamic shared memory (an index off by one?)";
    return "";
}

// Every block, in parallel over the OpenMP threads, in grid order or (reversed: race
// mode's second pass) the opposite one, so that blocks racing each other show; false when
// one faulted.
inline bool run_blocks(const Kernel& k, bool reversed, std::string& story) {
    const long long gx = k.grid.x, gy = k.grid.y, total = gx * gy * (long long)k.grid.z;
    std::atomic<bool> faulted{false};
    std::atomic<size_t> most_static{0};
    std::mutex m;
    KernelAttributes at;
    if (auto it = kernel_attributes().find(k.id); it != kernel_attributes().end()) at = it->second;
#pragma omp parallel for schedule(dynamic, 1) if (total > 1)
    for (long long n = 0; n < total; n++) {
        if (faulted.load(std::memory_order_relaxed)) continue;
        const long long i = reversed ? total - 1 - n : n;
        static thread_local Block block;
        static thread_local std::vector<float4> shared;
        const size_t need = k.shared_bytes + DYNAMIC_SHARED_GUARD;
        if (shared.size() * 16 < need) shared.resize((need + 15) / 16);
        block.kernel = &k;
        block.idx = {(unsigned)(i % gx), (unsigned)((i / gx) % gy), (unsigned)(i / (gx * gy))};
        block.dynamic_shared = (char*)shared.data();
        bool ok = run_block(block, reversed);
        if (ok) {
            size_t seen = most_static.load();
            while (block.static_shared > seen && !most_static.compare_exchange_weak(seen, block.static_shared)) {}
            const std::string f = shared_memory_fault(block, at);
            if (!f.empty()) { block.error = f; ok = false; }
        }
        if (!ok) {
            std::lock_guard<std::mutex> g(m);
            if (!faulted.exchange(true)) story = block_name(block) + ": " + block.error;
            pool.reset();
        }
        current_block = nullptr;
    }
    if (k.id) {
        size_t& s = kernel_attributes()[k.id].static_shared;
        s = std::max(s, most_static.load());
    }
    return !faulted.load();
}

inline std::string describe_difference(const Allocation* a, size_t offset, const char* first, const char* second) {
    std::string s = "byte " + std::to_string(offset) + " of a " + std::to_string(a->bytes) + "-byte allocation" +
                    (a->label[0] ? std::string(" (") + a->label + ")" : "");
    if (offset % 4 == 0 && offset + 4 <= a->bytes) {
        float x, y;
        memcpy(&x, first, 4);
        memcpy(&y, second, 4);
        char t[128];
        snprintf(t, sizeof t, " (float %d: %.9g forward, %.9g reversed)", (int)(offset / 4), x, y);
        s += t;
    }
    return s;
}

// The allocations a kernel can reach: those its arguments point into (a kernel has no
// other way to device memory). Race mode protects and compares only these.
inline std::vector<Allocation*> reachable(const Kernel& k) {
    std::vector<Allocation*> out;
    for (const void* p : k.pointers)
        if (Allocation* a = allocation_of(p, 0))
            if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
    return out;
}

// Race mode: both orders from the same memory, then every page either wrote compared.
inline bool run_in_both_orders(const Kernel& k, const std::vector<Allocation*>& reach, std::string& story) {
    RaceTracking& r = race();
    for (Allocation* a : reach) {
        if (!a->original) {
            a->original = (char*)mmap(nullptr, a->page_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            a->first_order = (char*)mmap(nullptr, a->page_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        }
        a->page_state.assign(a->page_bytes / PAGE, 0);
        mprotect(a->pages, a->page_bytes, PROT_READ);
    }
    r.order = 0;
    r.on = true;
    bool ok = run_blocks(k, false, story);
    if (ok) {
        for (Allocation* a : reach)
            for (size_t p = 0; p < a->page_state.size(); p++)
                if (a->page_state[p] & WRITTEN_FIRST) {
                    char* page = a->pages + p * PAGE;
                    memcpy(a->first_order + p * PAGE, page, PAGE);
                    memcpy(page, a->original + p * PAGE, PAGE);
                    mprotect(page, PAGE, PROT_READ);
                }
        r.order = 1;
        ok = run_blocks(k, true, story);
    }
    r.on = false;
    for (Allocation* a : reach) {
        mprotect(a->pages, a->page_bytes, PROT_READ | PROT_WRITE);
        bool touched = false;
        for (size_t p = 0; p < a->page_state.size() && ok; p++) {
            const uint8_t s = a->page_state[p];
            if (!(s & (WRITTEN_FIRST | WRITTEN_SECOND))) continue;
            touched = true;
            const char* now = a->pages + p * PAGE;
            const char* then = (s & WRITTEN_FIRST) ? a->first_order + p * PAGE : a->original + p * PAGE;
            if (memcmp(now, then, PAGE) == 0) continue;
            size_t i = 0;
            while (now[i] == then[i]) i++;
            const size_t offset = (size_t)(now + i - a->data);
            story = "its results depend on the order its threads run in (a missing __syncthreads()?): " +
                    describe_difference(a, offset - offset % 4, then + i - (offset % 4), now + i - (offset % 4));
            ok = false;
        }
        if (touched) {
            madvise(a->original, a->page_bytes, MADV_DONTNEED);
            madvise(a->first_order, a->page_bytes, MADV_DONTNEED);
        }
    }
    return ok;
}

// ---- carved tensors: guard zones of their own
//
// gkd carves one allocation into named tensors (parameters, gradients, activations) laid
// back to back, so an index one past a tensor lands in its neighbour, inside the
// allocation, where no guard can be. cuda/ names those tensors (name_tensors); for each
// launch, every tensor an argument points into is copied to an allocation of its own
// (guards, poisoned slack: allocate's) and the argument moved there, then copied back if
// the kernel could write it, and the arguments restored. A read one past the tensor then
// sees NaN or hits a guard page, a write is found by the slack check, and both messages
// name the tensor. Kernels that walk a whole allocation (AdamW, the gradient norm) are
// registered (whole_allocations) and left alone.
struct Tensor {
    char* start;
    size_t bytes;
    std::string name;  // "wte of the parameters"
};
inline std::map<uintptr_t, Tensor>& tensors() { static std::map<uintptr_t, Tensor> t; return t; }  // by start
inline void forget_tensors_in(const char* data, size_t bytes) {
    auto& t = tensors();
    t.erase(t.lower_bound((uintptr_t)data), t.lower_bound((uintptr_t)data + bytes));
}
// The named tensors of one allocation, replacing any named before inside [base, base + total).
inline void name_tensors(const char* group, void* base, size_t total, const size_t* bytes, const char* const* names,
                         int count) {
    forget_tensors_in((const char*)base, total);
    auto& t = tensors();
    char* p = (char*)base;
    for (int i = 0; i < count; i++) {
        if (bytes[i]) t[(uintptr_t)p] = Tensor{p, bytes[i], std::string(names[i]) + " of the " + group};
        p += bytes[i];
    }
}
inline const Tensor* tensor_of(const void* p) {
    auto& t = tensors();
    auto it = t.upper_bound((uintptr_t)p);
    if (it == t.begin()) return nullptr;
    --it;
    return (const char*)p < it->second.start + it->second.bytes ? &it->second : nullptr;
}
// the allocation each tensor is copied to, kept from launch to launch (its slack stays poison)
inline Allocation* relocation_for(const Tensor& t) {
    static std::map<std::pair<uintptr_t, size_t>, Allocation*> pool;
    Allocation*& a = pool[{(uintptr_t)t.start, t.bytes}];
    if (!a) {
        void* p = nullptr;
        if (allocate(&p, t.bytes) != cudaSuccess) return nullptr;
        a = allocation_of(p);
    }
    // named again each time: another tensor may have taken this place and size since
    snprintf(a->label, sizeof a->label, "tensor %s, on its own for this launch", t.name.c_str());
    return a;
}

inline cudaError_t run_relocated(const Kernel& k);
inline cudaError_t run_kernel(const Kernel& k) {
    auto at = kernel_attributes().find(k.id);
    if (tensors().empty() || (at != kernel_attributes().end() && at->second.whole_allocations)) return run_relocated(k);
    struct Moved { const Tensor* tensor; Allocation* copy; bool writable; };
    std::vector<Moved> moved;
    std::vector<std::pair<void**, void*>> restore;
    Kernel here = k;  // its pointers moved with the arguments
    auto shift = [&](const void* p, const Moved& m) { return (void*)(m.copy->data + ((const char*)p - m.tensor->start)); };
    for (const Kernel::Slot& s : k.slots) {
        void* p = *s.at;
        const Tensor* t = tensor_of(p);
        if (!t) continue;
        size_t i = 0;
        while (i < moved.size() && moved[i].tensor != t) i++;
        if (i == moved.size()) {
            Allocation* copy = relocation_for(*t);
            if (!copy) return fail(cudaErrorMemoryAllocation, "a carved tensor's copy for kernel " + std::string(k.name));
            memcpy(copy->data, t->start, t->bytes);
            moved.push_back({t, copy, false});
        }
        moved[i].writable = moved[i].writable || s.writable;
        restore.push_back({s.at, p});
        *s.at = shift(p, moved[i]);
    }
    for (const void*& p : here.pointers)
        for (const Moved& m : moved)
            if (tensor_of(p) == m.tensor) { p = shift(p, m); break; }
    const cudaError_t e = run_relocated(here);
    for (const Moved& m : moved)
        if (m.writable && e == cudaSuccess) memcpy(m.tensor->start, m.copy->data, m.tensor->bytes);
    for (auto& r : restore) *r.first = r.second;
    return e;
}
inline cudaError_t run_relocated(const Kernel& k) {
    std::string story;
    const std::vector<Allocation*> reach = reachable(k);
    const bool ok = race_mode() ? run_in_both_orders(k, reach, story) : run_blocks(k, false, story);
    if (!ok) return fail(cudaErrorLaunchFailure, std::string("kernel ") + k.name + ", " + story, true);
    if (!check_slack((std::string("kernel ") + k.name).c_str(), &reach)) return errors().sticky;
    return cudaSuccess;
}

// ---- streams and graphs

struct Work {
    std::function<cudaError_t()> run;
    std::string what;
};
}  // namespace emu

struct CUstream_st {
    bool capturing = false, invalidated = false;
    std::vector<std::shared_ptr<emu::Work>> recorded;
};
struct CUgraph_st {
    std::vector<std::shared_ptr<emu::Work>> work;
};
struct CUgraphExec_st {
    std::vector<std::shared_ptr<emu::Work>> work;
};
struct CUevent_st {
    double seconds = 0;
};

namespace emu {
inline CUstream_st*& capturing_stream() { static CUstream_st* s = nullptr; return s; }

// A call that a GPU refuses while a stream captures: refused, and the capture invalidated.
inline cudaError_t refuse_during_capture(const char* call) {
    CUstream_st* s = capturing_stream();
    if (!s) return cudaSuccess;
    s->invalidated = true;
    return fail(cudaErrorStreamCaptureUnsupported,
                std::string(call) + " during stream capture: a CUDA graph's capture allows no allocation, free or "
                                    "synchronising call (do it before cudaStreamBeginCapture)");
}

inline cudaError_t enqueue(cudaStream_t stream, std::shared_ptr<Work> w) {
    if (errors().sticky) return errors().sticky;
    CUstream_st* cap = capturing_stream();
    if (cap && stream == cap) {
        cap->recorded.push_back(std::move(w));
        return cudaSuccess;
    }
    if (cap && stream == nullptr) {
        cap->invalidated = true;
        return fail(cudaErrorStreamCaptureImplicit,
                    w->what + " on the legacy default stream while a blocking stream captures a graph");
    }
    const cudaError_t e = w->run();
    return e;
}

inline double now_seconds() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// ---- the launch: gpu::launch (cuda/common.cuh) calls this in the emulated build

template <typename T>
inline bool pointer_ok(const T& v, std::string& bad, int index) {
    if constexpr (std::is_pointer<T>::value) {
        if (v && !allocation_of((const void*)v, 0)) {  // one past the end is still its allocation
            bad = "argument " + std::to_string(index) + " is no device pointer (host memory, or freed)";
            return false;
        }
    }
    return true;
}

// What an argument lets a kernel write: a pointer to non-const memory, or any aligned
// pointer-sized word of a struct (which may hold such pointers). A pointer to const
// cannot be written through, so race mode leaves its memory alone.
template <typename T>
inline void argument_words(const T& v, std::vector<const void*>& out) {
    if constexpr (std::is_pointer<T>::value) {
        if (!std::is_const<std::remove_pointer_t<T>>::value && v) out.push_back((const void*)v);
        return;
    } else if constexpr (!std::is_class<T>::value) {
        return;
    }
    const char* b = (const char*)&v;
    for (size_t i = 0; i + sizeof(void*) <= sizeof(T); i += alignof(void*)) {
        const void* p;
        memcpy(&p, b + i, sizeof p);
        if (p) out.push_back(p);
    }
}

// Where each pointer-sized word of an argument lives, for the relocation of carved
// tensors: a pointer (writable unless to const), or every aligned word of a struct.
template <typename T>
inline void argument_slots(T& v, std::vector<Kernel::Slot>& out) {
    if constexpr (std::is_pointer<T>::value) {
        out.push_back({(void**)&v, !std::is_const<std::remove_pointer_t<T>>::value});
    } else if constexpr (std::is_class<T>::value) {
        char* b = (char*)&v;
        for (size_t i = 0; i + sizeof(void*) <= sizeof(T); i += alignof(void*))
            if ((uintptr_t)(b + i) % alignof(void*) == 0) out.push_back({(void**)(b + i), true});
    }
}

inline cudaError_t check_launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared) {
    const std::string k = std::string("kernel ") + name;
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || !grid.x || !grid.y || !grid.z)
        return fail(cudaErrorInvalidConfiguration, k + ": a grid or block dimension of 0");
    if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
        return fail(cudaErrorInvalidConfiguration,
                    k + ": " + std::to_string(threads) + " threads a block (" + std::to_string(block.x) + "x" +
                        std::to_string(block.y) + "x" + std::to_string(block.z) + "); the most is 1024");
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        return fail(cudaErrorInvalidConfiguration, k + ": a grid past 2^31-1 x 65535 x 65535 blocks");
    KernelAttributes at;
    auto it = kernel_attributes().find(kernel);
    if (it != kernel_attributes().end()) at = it->second;
    if (threads > (unsigned long long)at.max_threads)
        return fail(cudaErrorLaunchOutOfResources, k + ": " + std::to_string(threads) +
                                                       " threads a block, more than its __launch_bounds__(" +
                                                       std::to_string(at.max_threads) + ")");
    if (shared > at.max_dynamic_shared)
        return fail(cudaErrorInvalidValue,
                    k + ": " + std::to_string(shared) + " bytes of dynamic shared memory, more than its limit of " +
                        std::to_string(at.max_dynamic_shared) +
                        (at.max_dynamic_shared <= SHARED_DEFAULT
                             ? " (more than 48 KB needs cudaFuncSetAttribute(kernel, "
                               "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first)"
                             : ""));
    return cudaSuccess;
}

template <typename... P, typename... A>
inline cudaError_t launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared,
                          cudaStream_t stream, A&&... args) {
    if (errors().sticky) return errors().sticky;
    if (cudaError_t e = check_launch(name, (const void*)kernel, grid, block, shared)) return e;
    struct Closure {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> params;
        Kernel k;
    };
    auto c = std::make_shared<Closure>(Closure{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...), {}});
    std::string bad;
    int index = 0;
    bool ok = true;
    std::apply([&](const auto&... p) { ((ok = ok && pointer_ok(p, bad, ++index)), ...); }, c->params);
    if (!ok) return fail(cudaErrorIllegalAddress, std::string("kernel ") + name + ": " + bad, true);
    c->k = Kernel{name, [](const void* self) {
                      const Closure* cl = (const Closure*)self;
                      std::apply(cl->kernel, cl->params);
                  },
                  c.get(), grid, block, shared, {}, (const void*)kernel};
    std::apply([&](const auto&... p) { (argument_words(p, c->k.pointers), ...); }, c->params);
    std::apply([&](auto&... p) { (argument_slots(p, c->k.slots), ...); }, c->params);
    auto w = std::make_shared<Work>();
    w->what = std::string("kernel ") + name;
    w->run = [c] { return run_kernel(c->k); };
    return enqueue(stream, w);
}

}  // namespace emu

// ---- the runtime API

inline cudaError_t cudaGetDeviceCount(int* n) {
    const char* v = getenv("CUDA_VISIBLE_DEVICES");
    *n = v && (!*v || std::string(v) == "-1") ? 0 : 1;  // hidden as a real GPU would be
    return *n ? cudaSuccess : emu::fail(cudaErrorNoDevice, "CUDA_VISIBLE_DEVICES hides the emulated device");
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::fail(cudaErrorInvalidDevice, "device " + std::to_string(d)); }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "gkd's SIMT emulator (the CPU, %d OpenMP threads)", omp_get_max_threads());
    p->totalGlobalMem = emu::DEVICE_BYTES;
    p->sharedMemPerBlock = emu::SHARED_DEFAULT;
    p->sharedMemPerBlockOptin = emu::SHARED_OPTIN;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = omp_get_max_threads();
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
    *v = a == cudaDevAttrClockRate ? 1000000 : a == cudaDevAttrMaxThreadsPerBlock ? 1024 : omp_get_max_threads();
    return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t e) {
    emu::Errors& s = emu::errors();
    if (e != cudaSuccess && (e == s.last || e == s.sticky) && !s.message.empty()) return s.message.c_str();
    return emu::error_name(e);
}
inline cudaError_t cudaGetLastError() {
    emu::Errors& s = emu::errors();
    if (s.sticky) return s.sticky;
    cudaError_t e = s.last;
    s.last = cudaSuccess;
    return e;
}

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
    if (emu::errors().sticky) return emu::errors().sticky;
    if (cudaError_t e = emu::refuse_during_capture("cudaMalloc")) return e;
    return emu::allocate(p, bytes);
}
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }
inline cudaError_t cudaFree(void* p) {
    if (cudaError_t e = emu::refuse_during_capture("cudaFree")) return e;
    return emu::release(p);
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    *total = emu::DEVICE_BYTES;
    *free_bytes = emu::DEVICE_BYTES - emu::memory().bytes_now;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
    if (cudaError_t e = emu::refuse_during_capture("cudaDeviceSynchronize")) return e;
    return emu::errors().sticky;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
    if (cudaError_t e = emu::refuse_during_capture("cudaStreamSynchronize")) return e;
    return emu::errors().sticky;
}

namespace emu {
inline cudaError_t check_device_range(const void* p, size_t bytes, const char* call, const char* which) {
    if (bytes == 0 || allocation_of(p, bytes)) return cudaSuccess;
    Allocation* a = allocation_of(p);
    return fail(cudaErrorInvalidValue,
                std::string(call) + ": the " + which + " [" + std::to_string((uintptr_t)p) + ", +" + std::to_string(bytes) +
                    ") is " + (a ? "longer than its device allocation of " + std::to_string(a->bytes) + " bytes" : "no device memory"));
}
inline cudaError_t copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream, bool async) {
    if (errors().sticky) return errors().sticky;
    if (!async)
        if (cudaError_t e = refuse_during_capture("cudaMemcpy")) return e;
    const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice ||
                            (kind == cudaMemcpyDefault && allocation_of(dst));
    const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice ||
                            (kind == cudaMemcpyDefault && allocation_of(src));
    if (dst_device)
        if (cudaError_t e = check_device_range(dst, n, "cudaMemcpy", "destination")) return e;
    if (src_device)
        if (cudaError_t e = check_device_range(src, n, "cudaMemcpy", "source")) return e;
    if (src_device && !dst_device) bytes_to_host() += n;
    if (n && (const char*)dst < (const char*)src + n && (const char*)src < (const char*)dst + n)
        return fail(cudaErrorInvalidValue, "cudaMemcpy: the source and the destination overlap (" + std::to_string(n) +
                                               " bytes, " + std::to_string((const char*)dst - (const char*)src) +
                                               " apart): CUDA leaves the result undefined");
    auto w = std::make_shared<Work>();
    w->what = "cudaMemcpy";
    w->run = [=] { memcpy(dst, src, n); return cudaSuccess; };
    return enqueue(async ? stream : nullptr, w);
}
inline cudaError_t fill(void* dst, int value, size_t n, cudaStream_t stream, bool async) {
    if (errors().sticky) return errors().sticky;
    if (!async)
        if (cudaError_t e = refuse_during_capture("cudaMemset")) return e;
    if (cudaError_t e = check_device_range(dst, n, "cudaMemset", "destination")) return e;
    auto w = std::make_shared<Work>();
    w->what = "cudaMemset";
    w->run = [=] { memset(dst, value, n); return cudaSuccess; };
    return enqueue(async ? stream : nullptr, w);
}
}  // namespace emu

inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
    return emu::copy(dst, src, n, kind, nullptr, false);
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s = nullptr) {
    return emu::copy(dst, src, n, kind, s, true);
}
inline cudaError_t cudaMemset(void* dst, int value, size_t n) { return emu::fill(dst, value, n, nullptr, false); }
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t s = nullptr) {
    return emu::fill(dst, value, n, s, true);
}

// A kernel's static shared memory is what its blocks have reached so far (the emulator
// learns it by running them): after a first launch, what a GPU's compiler would say.
struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    int maxThreadsPerBlock;
};
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void* kernel) {
    const emu::KernelAttributes at = emu::kernel_attributes()[kernel];
    a->sharedSizeBytes = at.static_shared;
    a->maxThreadsPerBlock = at.max_threads;
    return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > emu::SHARED_OPTIN)
        return emu::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: at most " + std::to_string(emu::SHARED_OPTIN) +
                                                    " bytes of dynamic shared memory a block");
    emu::kernel_attributes()[kernel].max_dynamic_shared = (size_t)value;
    return cudaSuccess;
}
template <typename... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute((const void*)kernel, attr, value);
}

inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
    *s = new CUstream_st;
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (emu::capturing_stream() == s) emu::capturing_stream() = nullptr;
    delete s;
    return cudaSuccess;
}
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    if (!s) return emu::fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture on the legacy default stream");
    if (emu::capturing_stream()) return emu::fail(cudaErrorIllegalState, "cudaStreamBeginCapture while another stream captures");
    s->capturing = true;
    s->invalidated = false;
    s->recorded.clear();
    emu::capturing_stream() = s;
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
    *g = nullptr;
    if (!s || !s->capturing) return emu::fail(cudaErrorIllegalState, "cudaStreamEndCapture on a stream that is not capturing");
    s->capturing = false;
    emu::capturing_stream() = nullptr;
    if (s->invalidated) {
        s->recorded.clear();
        return emu::fail(cudaErrorStreamCaptureInvalidated, "the capture was invalidated by a refused call");
    }
    *g = new CUgraph_st{std::move(s->recorded)};
    s->recorded.clear();
    return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long = 0) {
    if (!g) return emu::fail(cudaErrorInvalidValue, "cudaGraphInstantiate of no graph");
    *e = new CUgraphExec_st{g->work};
    return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (!e) return emu::fail(cudaErrorInvalidValue, "cudaGraphLaunch of no graph");
    for (auto& w : e->work)
        if (cudaError_t r = emu::enqueue(s, w)) return r;
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete g; return cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { delete e; return cudaSuccess; }

inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
    auto w = std::make_shared<emu::Work>();
    w->what = "cudaEventRecord";
    w->run = [e] { e->seconds = emu::now_seconds(); return cudaSuccess; };
    return emu::enqueue(s, w);
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) {
    if (cudaError_t e = emu::refuse_during_capture("cudaEventSynchronize")) return e;
    return emu::errors().sticky;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)((b->seconds - a->seconds) * 1e3);
    return cudaSuccess;
}

// ---- what the emulated cuBLAS calls (hooks.h)

extern "C" __attribute__((visibility("default"), used)) int gkd_emu_enqueue(cudaStream_t stream, void (*work)(void*),
                                                                             void* ctx, void (*release)(void*),
                                                                             const char* what) {
    std::shared_ptr<void> owned(ctx, release);  // released with the last copy of the work
    auto w = std::make_shared<emu::Work>();
    w->what = what;
    w->run = [owned, work] {  // no slack check: the emulated cuBLAS checks its extents before it runs
        work(owned.get());
        return emu::errors().sticky;
    };
    return (int)emu::enqueue(stream, w);
}
extern "C" __attribute__((visibility("default"), used)) int gkd_emu_is_device_range(const void* p, size_t bytes) {
    if (!emu::allocation_of(p, bytes)) return 0;
    const emu::Tensor* t = emu::tensor_of(p);  // inside a carved tensor: within it
    return !t || (const char*)p + bytes <= t->start + t->bytes;
}
extern "C" __attribute__((visibility("default"), used)) void gkd_emu_fault(const char* message) {
    emu::fail(cudaErrorIllegalAddress, message, true);
}
extern "C" __attribute__((visibility("default"), used)) int gkd_emu_is_capturing(cudaStream_t stream) {
    return stream && emu::capturing_stream() == stream;
}
extern "C" __attribute__((visibility("default"), used)) void gkd_emu_count_flops(double flops, int batched) {
    (batched ? emu::batched_matmul_flops() : emu::matmul_flops()) += flops;
}
