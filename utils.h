// utils.h — what every part of gkd shares: errors, checked file I/O, atomic writes,
// the seeded RNG, and a few string helpers.
//
// Non-obvious choices:
// - Every error a user can cause is a GkdError carrying one line that names the file
//   (and line) or the flag at fault. main() prints it and exits 1; the tests catch it.
//   Nothing calls exit() from deep inside, so a test can check every refusal in-process.
// - Outputs are written to "<path>.tmp", fsync'ed and renamed over the target, so a crash
//   never leaves a half-written model.bin behind.
// - The RNG is xoshiro256** seeded through splitmix64. Sampling draws from a generator
//   derived from (seed, stream, row), so the tokens a row gets do not depend on the batch
//   size, the thread count, or which other rows are still decoding.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#include <chrono>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

// OpenMP when the compiler has it; otherwise one thread (the fuzzers build without it).
#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_in_parallel() { return 0; }
#endif

struct GkdError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string strf(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < (int)sizeof small) return std::string(small, n < 0 ? 0 : n);
    std::string big(n + 1, '\0');
    va_start(ap, fmt);
    vsnprintf(&big[0], big.size(), fmt, ap);
    va_end(ap);
    big.resize(n);
    return big;
}

// A user-facing error: the message must already name the file/line or flag at fault.
#define GKD_FAIL(...) throw GkdError(strf(__VA_ARGS__))

// An internal invariant. If it fires it is our bug, so it names our source file and line.
#define GKD_ASSERT(cond, hint)                                                            \
    do {                                                                                  \
        if (!(cond))                                                                      \
            throw GkdError(strf("%s:%d: internal check failed: %s (%s)", __FILE__,        \
                                __LINE__, #cond, hint));                                  \
    } while (0)

// A function both devices run, the same source: nvcc compiles it for the host and the GPU
// (loss.h's bucket_term); g++ and the emulator's build see a plain function.
#ifdef __CUDACC__
#define GKD_HOST_DEVICE __host__ __device__
#else
#define GKD_HOST_DEVICE
#endif

// ----------------------------------------------------------------------------
// checked file I/O

struct InputFile {
    std::string path;
    FILE* f = nullptr;
    long long size = 0;
    explicit InputFile(const std::string& p) : path(p) {
        f = fopen(p.c_str(), "rb");
        if (!f) GKD_FAIL("%s: cannot open for reading: %s", p.c_str(), strerror(errno));
        if (fseeko(f, 0, SEEK_END) != 0) GKD_FAIL("%s: cannot seek (is it a regular file?)", p.c_str());
        size = ftello(f);
        fseeko(f, 0, SEEK_SET);
    }
    ~InputFile() { if (f) fclose(f); }
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;
    void read_exact(void* dst, size_t bytes, const char* what) {
        if (fread(dst, 1, bytes, f) != bytes)
            GKD_FAIL("%s: truncated while reading %s", path.c_str(), what);
    }
};

inline bool is_directory(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
inline bool is_file(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
inline std::string parent_directory(const std::string& p) {
    size_t slash = p.find_last_of('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
}
// The folder a model path stands for: itself when it is one (a Hugging Face download),
// else the folder of the file.
inline std::string model_folder(const std::string& p) { return is_directory(p) ? p : parent_directory(p); }

// Calls fn(line, line_number) for each line of text (1-based; a trailing '\r' removed, so
// Windows line endings read the same; a final line without '\n' counts).
template <typename F>
void for_each_line(const std::string& text, F fn) {
    size_t pos = 0;
    for (int line_no = 1; pos < text.size(); line_no++) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        fn(line, line_no);
    }
}

inline std::string read_whole_file(const std::string& path) {
    InputFile in(path);
    std::string s((size_t)in.size, '\0');
    if (in.size > 0) in.read_exact(&s[0], s.size(), "the file");
    return s;
}

// Writes to path.tmp, fsyncs, then renames: readers see the old file or the new one.
struct AtomicWriter {
    std::string path, tmp;
    FILE* f = nullptr;
    explicit AtomicWriter(const std::string& p) : path(p), tmp(p + ".tmp") {
        f = fopen(tmp.c_str(), "wb");
        if (!f) GKD_FAIL("%s: cannot open for writing: %s", tmp.c_str(), strerror(errno));
    }
    void write(const void* src, size_t bytes) {
        if (bytes && fwrite(src, 1, bytes, f) != bytes)
            GKD_FAIL("%s: write failed: %s", tmp.c_str(), strerror(errno));
    }
    void commit() {
        if (fflush(f) != 0 || fsync(fileno(f)) != 0)
            GKD_FAIL("%s: flush failed: %s", tmp.c_str(), strerror(errno));
        fclose(f);
        f = nullptr;
        if (rename(tmp.c_str(), path.c_str()) != 0)
            GKD_FAIL("%s: cannot rename into place: %s", path.c_str(), strerror(errno));
    }
    ~AtomicWriter() {
        if (f) { fclose(f); unlink(tmp.c_str()); }  // not committed: leave no debris
    }
};

inline void write_file_atomic(const std::string& path, const std::string& content) {
    AtomicWriter w(path);
    w.write(content.data(), content.size());
    w.commit();
}

// ----------------------------------------------------------------------------
// one writer at a time: a lock the kernel drops when its process dies

// An exclusive POSIX record lock (fcntl F_SETLK) on a file, created if absent, that holds
// the holder's pid as text. The kernel releases it when the process exits, however it
// exits (kill -9 included), so nothing stale is ever left behind; F_GETLK names the pid
// of a live holder. POSIX locks belong to the process and drop when any descriptor of
// the file closes, so the lock file is never opened elsewhere. `what` names the
// resource in the refusal: "the run folder run/".
struct FileLock {
    std::string path;
    int fd = -1;
    FileLock() = default;
    FileLock(const std::string& lock_path, const std::string& what) : path(lock_path) {
        fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) GKD_FAIL("%s: cannot open the lock file: %s", path.c_str(), strerror(errno));
        struct flock fl = {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        if (fcntl(fd, F_SETLK, &fl) != 0) {
            const int pid = holder_of(fd);
            close(fd);
            fd = -1;
            GKD_FAIL("%s is in use by another gkd process (pid %d, holding %s); wait for it to end, or stop it",
                     what.c_str(), pid, path.c_str());
        }
        std::string pid = std::to_string(getpid()) + "\n";
        if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != (ssize_t)pid.size())
            GKD_FAIL("%s: cannot write the lock file: %s", path.c_str(), strerror(errno));
    }
    // the pid of another process holding a lock on fd's file, or 0 when none does
    static int holder_of(int fd) {
        struct flock fl = {};
        fl.l_type = F_WRLCK;  // would a writer's lock be refused, and by whom
        fl.l_whence = SEEK_SET;
        return fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK ? (int)fl.l_pid : 0;
    }
    // the same for path (0 when the file is absent)
    static int holder(const std::string& lock_path) {
        int f = open(lock_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (f < 0) return 0;
        const int pid = holder_of(f);
        close(f);  // this process holds no lock on it, so closing drops none
        return pid;
    }
    FileLock(FileLock&& o) noexcept : path(std::move(o.path)), fd(o.fd) { o.fd = -1; }
    FileLock& operator=(FileLock&& o) noexcept {
        std::swap(path, o.path);
        std::swap(fd, o.fd);
        return *this;
    }
    ~FileLock() { if (fd >= 0) close(fd); }
};

// ----------------------------------------------------------------------------
// RNG

inline uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A seed for an independent stream: hash of (seed, a, b).
inline uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
    uint64_t x = seed;
    uint64_t h = splitmix64(x);
    x = h ^ (a * 0xD1B54A32D192ED03ull);
    h = splitmix64(x);
    x = h ^ (b * 0x8CB92BA72F3D8DD7ull);
    return splitmix64(x);
}

struct Rng {
    uint64_t s[4];
    explicit Rng(uint64_t seed = 0) {
        uint64_t x = seed;
        for (auto& w : s) w = splitmix64(x);
    }
    static uint64_t rotl(uint64_t v, int k) { return (v << k) | (v >> (64 - k)); }
    uint64_t next() {  // xoshiro256**
        uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
        s[2] ^= t; s[3] = rotl(s[3], 45);
        return r;
    }
    static double to_uniform(uint64_t r) { return (double)(r >> 11) * 0x1.0p-53; }  // [0, 1)
    double uniform() { return to_uniform(next()); }
    // Box-Muller from two successive draws, one value per call: simple and reproducible.
    // normal_from lets a caller draw the stream in order and transform it in parallel
    // (gpt_init_random), with the same values.
    static double normal_from(uint64_t r1, uint64_t r2) {
        double u1 = to_uniform(r1), u2 = to_uniform(r2);
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    }
    double normal() {
        uint64_t r1 = next();
        return normal_from(r1, next());
    }
    uint64_t below(uint64_t n) { return (uint64_t)(uniform() * (double)n) % n; }
};

// ----------------------------------------------------------------------------
// misc

inline double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

inline std::string format_duration(double s) {
    if (!(s >= 0) || s > 1e7) return "--:--";
    long t = (long)(s + 0.5);
    if (t >= 3600) return strf("%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    return strf("%ld:%02ld", t / 60, t % 60);
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The process's peak resident memory so far, in MB (Linux reports ru_maxrss in kB).
inline double peak_rss_mb() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024.0;
}
