// data/teacher_cache.h — the offline teacher cache: the teacher's top-K log-probs at every
// completion position of a dataset, computed once (gkd teacher-cache) and read by every
// later supervised distillation run (gkd distill --teacher-cache) without the teacher.
//
// The format is docs/formats.md §9. In short, little-endian:
//   "GKDTOPK\0", uint32 version = 1, uint32 0                        16 bytes
//   per example, per completion position (its targets, EOS included):
//       (K + 1) fp16 log-probs (the top-K, then the tail), K ids (uint16, or uint32 when V > 65536)
//   the index: per example {uint64 offset, uint32 positions, uint32 checksum of its block}
//   the header, JSON: version, vocabulary, K, temperature, and the content hashes of the
//       teacher, the data, the tokenizer and the tokenized rows
//   the trailer: uint64 index offset, uint64 header offset, uint64 header bytes,
//       uint64 checksum of index + header, "GKDTOPK!"                 40 bytes
//
// Tricks:
// - The header is last, so the cache is written in one streaming pass, and the trailer's
//   fixed size finds it. A truncated file has no valid trailer; a flipped byte fails the
//   index's checksum or its block's, which is checked whenever the block is read.
// - It is read by memory map: a step touches only its examples' blocks, the file is never
//   loaded whole, and many runs on one machine share its pages.
// - It is written to F.partial, fsynced and renamed: a reader sees no cache or the whole
//   one. F.partial carries the writer's lock (FileLock), so a second writer is refused, a
//   reader is told the cache is being written, and a writer killed with -9 leaves an
//   unlocked F.partial that the next writer simply replaces.
// - fp16 log-probs: 2 bytes, relative error 2^-11 in the log-prob (so about 0.5% in a
//   probability of e^-10); 16-bit ids for GPT-2's 50257 tokens: 258 bytes per position at
//   K = 64 against 201 kB for a float logit row.
//
// Part of gkd.cu's single translation unit, after loss.h's TeacherSignal and before
// device.h, whose devices fill a TeacherSignal from it.
#pragma once
#include <sys/mman.h>

#include <string>
#include <vector>

// IEEE half precision from float, rounding to nearest even; infinities and NaN kept (the way
// back is safetensors.h's half_to_float).
inline uint16_t float_to_half(float value) {
    uint32_t x;
    memcpy(&x, &value, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds above 65504: infinity
    if (abs < 0x38800000u) {                                     // a half subnormal, or 0
        if (abs < 0x33000000u) return (uint16_t)sign;
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u, shift = 126 - (abs >> 23);
        uint32_t h = mant >> shift;
        const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((abs - 0x38000000u) >> 13);
    const uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

// FNV-1a, 64 bits: the cache's content hashes and checksums (not a cryptographic hash: it
// tells a changed input from an unchanged one, which is all the cache asks).
inline uint64_t fnv1a(const void* data, size_t n, uint64_t h = 14695981039346656037ull) {
    const unsigned char* p = (const unsigned char*)data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
inline std::string hex64(uint64_t x) { return strf("%016llx", (unsigned long long)x); }

// A file's content hash, streamed in 1 MB pieces.
inline std::string file_content_hash(const std::string& path) {
    InputFile in(path);
    std::vector<char> buf(1 << 20);
    uint64_t h = fnv1a(nullptr, 0);
    for (long long left = in.size; left > 0;) {
        const size_t n = (size_t)std::min<long long>(left, (long long)buf.size());
        in.read_exact(buf.data(), n, "its content (for the hash)");
        h = fnv1a(buf.data(), n, h);
        left -= n;
    }
    return hex64(h);
}

// What the tokenizer makes of its vocabulary: every id's bytes, in order.
inline std::string tokenizer_hash(const Tokenizer& tok) {
    uint64_t h = fnv1a(nullptr, 0);
    for (int i = 0; i < tok.vocab_size(); i++) {
        const std::string piece = tok.decode({i});
        const uint32_t n = (uint32_t)piece.size();
        h = fnv1a(&n, 4, h);
        h = fnv1a(piece.data(), piece.size(), h);
    }
    return hex64(h);
}

// The tokenized rows the cache covers: every example's prompt and completion ids.
inline std::string tokens_hash(const Dataset& d) {
    uint64_t h = fnv1a(nullptr, 0);
    for (const Example& e : d.examples)
        for (const std::vector<int>* ids : {&e.prompt, &e.completion}) {
            const uint32_t n = (uint32_t)ids->size();
            h = fnv1a(&n, 4, h);
            h = fnv1a(ids->data(), ids->size() * sizeof(int), h);
        }
    return hex64(h);
}

constexpr uint32_t TEACHER_CACHE_VERSION = 1;
constexpr size_t TEACHER_CACHE_TRAILER = 40;

// The header's fields (docs/formats.md §9).
struct TeacherCacheHeader {
    int vocab_size = 0, top_k = 0, id_bytes = 2;
    double temperature = 1.0;
    std::string teacher, teacher_hash, data, data_hash, tokenizer, tokenizer_hash, tokens_hash;
    size_t examples = 0, positions = 0;
    json to_json() const {
        return {{"format", "gkd teacher cache"}, {"version", TEACHER_CACHE_VERSION}, {"vocab_size", vocab_size},
                {"top_k", top_k}, {"id_bytes", id_bytes}, {"temperature", temperature},
                {"values", "fp16 log-probabilities at the temperature: the top-K, then the tail"},
                {"teacher", {{"path", teacher}, {"hash", teacher_hash}}},
                {"data", {{"path", data}, {"hash", data_hash}, {"examples", examples}, {"positions", positions}}},
                {"tokenizer", {{"name", tokenizer}, {"hash", tokenizer_hash}}}, {"tokens_hash", tokens_hash}};
    }
    // bytes of one position's record
    size_t record_bytes() const { return (size_t)(top_k + 1) * 2 + (size_t)top_k * id_bytes; }
};

struct TeacherCacheIndexEntry {
    uint64_t offset;
    uint32_t positions, checksum;
};

// Streams a cache to path.partial under its lock, through the lock's own descriptor (a
// second descriptor's close would drop the lock); commit() fsyncs, renames it to path,
// and only then lets the lock go.
struct TeacherCacheWriter {
    std::string path, partial;
    FileLock lock;
    TeacherCacheHeader header;
    std::vector<TeacherCacheIndexEntry> index;
    uint64_t offset = 0;
    std::vector<unsigned char> block;
    bool committed = false;

    TeacherCacheWriter(const std::string& p, const TeacherCacheHeader& h) : path(p), partial(p + ".partial"), header(h) {
        for (int attempt = 0;; attempt++) {
            lock = FileLock(partial, strf("the teacher cache %s", path.c_str()));
            // the lock must be on the file now at partial, not one a finishing writer renamed away
            struct stat locked, named;
            if (fstat(lock.fd, &locked) == 0 && stat(partial.c_str(), &named) == 0 && locked.st_ino == named.st_ino &&
                locked.st_dev == named.st_dev)
                break;
            if (attempt == 3) GKD_FAIL("%s: another writer keeps replacing it; try again", partial.c_str());
        }
        if (ftruncate(lock.fd, 0) != 0) GKD_FAIL("%s: cannot truncate: %s", partial.c_str(), strerror(errno));
        const uint32_t version[2] = {TEACHER_CACHE_VERSION, 0};
        write("GKDTOPK", 8);
        write(version, sizeof version);
    }
    void write(const void* p, size_t n) {
        if (n && pwrite(lock.fd, p, n, (off_t)offset) != (ssize_t)n)
            GKD_FAIL("%s: write failed: %s", partial.c_str(), strerror(errno));
        offset += n;
    }
    // one example's positions: rows (positions, K + 1) of log-probs and (positions, K) of ids
    void add_example(const float* logp, const int32_t* ids, int positions) {
        const int K = header.top_k;
        block.resize((size_t)positions * header.record_bytes());
        unsigned char* out = block.data();
        for (int t = 0; t < positions; t++) {
            for (int j = 0; j <= K; j++) {
                const uint16_t h = float_to_half(logp[(size_t)t * (K + 1) + j]);
                memcpy(out, &h, 2);
                out += 2;
            }
            for (int j = 0; j < K; j++) {
                const uint32_t id = (uint32_t)ids[(size_t)t * K + j];
                memcpy(out, &id, header.id_bytes);  // little-endian: the low bytes first
                out += header.id_bytes;
            }
        }
        index.push_back({offset, (uint32_t)positions, (uint32_t)fnv1a(block.data(), block.size())});
        write(block.data(), block.size());
        header.positions += positions;
    }
    void commit() {
        header.examples = index.size();
        const std::string text = header.to_json().dump(2) + "\n";
        const size_t index_bytes = index.size() * sizeof(TeacherCacheIndexEntry);
        const uint64_t index_offset = offset, header_offset = offset + index_bytes;
        write(index.data(), index_bytes);
        write(text.data(), text.size());
        const uint64_t sum = fnv1a(text.data(), text.size(), fnv1a(index.data(), index_bytes));
        const uint64_t trailer[4] = {index_offset, header_offset, (uint64_t)text.size(), sum};
        write(trailer, sizeof trailer);
        write("GKDTOPK!", 8);
        if (fsync(lock.fd) != 0) GKD_FAIL("%s: flush failed: %s", partial.c_str(), strerror(errno));
        if (rename(partial.c_str(), path.c_str()) != 0)
            GKD_FAIL("%s: cannot rename into place: %s", path.c_str(), strerror(errno));
        committed = true;
    }
    ~TeacherCacheWriter() {
        if (!committed && lock.fd >= 0) unlink(partial.c_str());  // an error: no debris (the lock is still ours)
    }
};

// A cache opened by memory map. Opening checks the trailer, the index and the header;
// matches() checks it against a run's data and models; fill() reads a batch's positions.
struct TeacherCache {
    std::string path;
    TeacherCacheHeader header;
    const unsigned char* base = nullptr;
    size_t size = 0;
    const TeacherCacheIndexEntry* index = nullptr;

    explicit TeacherCache(const std::string& p) : path(p) {
        if (int pid = FileLock::holder(path + ".partial"))
            GKD_FAIL("%s: the cache is being written by another gkd process (pid %d); wait for it to finish",
                     path.c_str(), pid);
        int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) GKD_FAIL("%s: cannot open the teacher cache: %s", path.c_str(), strerror(errno));
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); GKD_FAIL("%s: not a regular file", path.c_str()); }
        size = (size_t)st.st_size;
        if (size < 16 + TEACHER_CACHE_TRAILER) {
            close(fd);
            GKD_FAIL("%s: %zu bytes is too short for a teacher cache: truncated or not one", path.c_str(), size);
        }
        void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);  // the mapping stays
        if (m == MAP_FAILED) GKD_FAIL("%s: cannot map the teacher cache: %s", path.c_str(), strerror(errno));
        base = (const unsigned char*)m;
        if (memcmp(base, "GKDTOPK", 8) != 0) fail("not a gkd teacher cache (bad magic)");
        uint32_t version;
        memcpy(&version, base + 8, 4);
        if (version != TEACHER_CACHE_VERSION)
            fail(strf("teacher cache version %u, this gkd reads version %u", version, TEACHER_CACHE_VERSION));
        uint64_t trailer[4];
        memcpy(trailer, base + size - TEACHER_CACHE_TRAILER, sizeof trailer);
        if (memcmp(base + size - 8, "GKDTOPK!", 8) != 0)
            fail("no trailer at the end: truncated (or a write that did not finish)");
        const uint64_t index_offset = trailer[0], header_offset = trailer[1], header_bytes = trailer[2];
        if (index_offset < 16 || header_offset < index_offset || header_bytes > size ||
            header_offset + header_bytes != size - TEACHER_CACHE_TRAILER ||
            (header_offset - index_offset) % sizeof(TeacherCacheIndexEntry) != 0)
            fail("the trailer's offsets do not fit the file: truncated or corrupt");
        uint64_t sum = fnv1a(base + index_offset, header_offset - index_offset);
        if (fnv1a(base + header_offset, header_bytes, sum) != trailer[3])
            fail("the index or the header fails its checksum: corrupt");
        json j;
        try {
            j = json::parse(std::string((const char*)base + header_offset, header_bytes));
            header.vocab_size = j.at("vocab_size"); header.top_k = j.at("top_k"); header.id_bytes = j.at("id_bytes");
            header.temperature = j.at("temperature");
            header.teacher = j.at("teacher").at("path"); header.teacher_hash = j.at("teacher").at("hash");
            header.data = j.at("data").at("path"); header.data_hash = j.at("data").at("hash");
            header.examples = j.at("data").at("examples"); header.positions = j.at("data").at("positions");
            header.tokenizer = j.at("tokenizer").at("name"); header.tokenizer_hash = j.at("tokenizer").at("hash");
            header.tokens_hash = j.at("tokens_hash");
        } catch (const json::exception& e) {
            fail(strf("the header is malformed: %s", dataset_detail::short_json_error(e).c_str()));
        }
        if (header.top_k < 1 || header.top_k > header.vocab_size || (header.id_bytes != 2 && header.id_bytes != 4) ||
            (header_offset - index_offset) / sizeof(TeacherCacheIndexEntry) != header.examples)
            fail("the header's K, id width or example count is out of range");
        index = (const TeacherCacheIndexEntry*)(base + index_offset);
        for (size_t e = 0; e < header.examples; e++)
            if (index[e].offset < 16 || index[e].offset + (uint64_t)index[e].positions * header.record_bytes() > index_offset)
                fail(strf("example %zu's block lies outside the file's blocks: corrupt", e));
    }
    ~TeacherCache() { if (base) munmap((void*)base, size); }
    TeacherCache(const TeacherCache&) = delete;
    TeacherCache& operator=(const TeacherCache&) = delete;

    [[noreturn]] void fail(const std::string& why) const { GKD_FAIL("%s: %s", path.c_str(), why.c_str()); }

    // Refuses a cache made for other inputs, naming the field that differs. The teacher is
    // checked when the run loads one (teacher_path non-empty).
    void check_matches(const Dataset& data, const std::string& data_path, const Tokenizer& tok, int vocab_size,
                       double temperature, const std::string& teacher_path) const {
        auto differs = [&](const char* field, const std::string& mine, const std::string& theirs) {
            fail(strf("this cache does not match the run: its %s is %s, the run's is %s (rebuild it with gkd "
                      "teacher-cache)", field, theirs.c_str(), mine.c_str()));
        };
        if (vocab_size != header.vocab_size)
            differs("vocab_size", std::to_string(vocab_size), std::to_string(header.vocab_size));
        const std::string tok_hash = tokenizer_hash(tok);
        if (tok_hash != header.tokenizer_hash)
            differs("tokenizer.hash", tok_hash + " (" + tok.name() + ")", header.tokenizer_hash + " (" + header.tokenizer + ")");
        const std::string d_hash = file_content_hash(data_path);
        if (d_hash != header.data_hash)
            differs("data.hash", d_hash + " (" + data_path + ")", header.data_hash + " (" + header.data + ")");
        if (data.examples.size() != header.examples)
            differs("data.examples", std::to_string(data.examples.size()), std::to_string(header.examples));
        const std::string t_hash = tokens_hash(data);
        if (t_hash != header.tokens_hash) differs("tokens_hash", t_hash, header.tokens_hash);
        if (temperature != header.temperature)
            differs("temperature (--loss-temperature)", strf("%g", temperature), strf("%g", header.temperature));
        if (!teacher_path.empty()) {
            const std::string th = file_content_hash(teacher_path);
            if (th != header.teacher_hash)
                differs("teacher.hash", th + " (" + teacher_path + ")", header.teacher_hash + " (" + header.teacher + ")");
        }
    }

    // The signal of batch b, whose row i is example examples[i] with its dataset completion:
    // row i's targets, in order, are that example's positions. Each block read is checked.
    void fill(TeacherSignal& signal, const TrainBatch& b, const std::vector<size_t>& examples) const {
        const int K = header.top_k;
        signal.reset((size_t)b.N, K);
        for (int i = 0; i < b.B; i++) {
            const size_t e = examples[i];
            GKD_ASSERT(e < header.examples, "an example outside the cache");
            const TeacherCacheIndexEntry& entry = index[e];
            const unsigned char* p = base + entry.offset;
            const size_t bytes = (size_t)entry.positions * header.record_bytes();
            if ((uint32_t)fnv1a(p, bytes) != entry.checksum)
                fail(strf("example %zu's block fails its checksum: corrupt", e));
            uint32_t t_seen = 0;
            for (int t = 0; t < b.length(i); t++) {
                const size_t n = (size_t)b.row_start[i] + t;
                if (b.targets[n] < 0) continue;
                if (t_seen == entry.positions)
                    fail(strf("example %zu has %u positions in the cache and more in the batch", e, entry.positions));
                const unsigned char* r = p + (size_t)t_seen++ * header.record_bytes();
                for (int j = 0; j <= K; j++) {
                    uint16_t h;
                    memcpy(&h, r + 2 * j, 2);
                    signal.logp[n * (K + 1) + j] = half_to_float(h);
                }
                const unsigned char* ids = r + 2 * (K + 1);
                for (int j = 0; j < K; j++) {
                    uint32_t id = 0;
                    memcpy(&id, ids + (size_t)j * header.id_bytes, header.id_bytes);
                    if ((int)id >= header.vocab_size) fail(strf("example %zu holds token id %u >= V: corrupt", e, id));
                    signal.ids[n * K + j] = (int32_t)id;
                }
            }
            if (t_seen != entry.positions)
                fail(strf("example %zu has %u positions in the cache, %u in the batch", e, entry.positions, t_seen));
        }
    }
};
