// distributed.h — data parallelism over MPI ranks: `mpirun -np N ./gkd distill ...`.
//
// Each rank takes a contiguous share of the global batch's prompts (rank r: prompts
// floor(B r / N) .. floor(B (r+1) / N) - 1, so shares differ by at most one prompt), with
// their K samples each, samples and scores them, and backpropagates its share of the
// global loss: every position is weighted by the global batch's normalisation (rows and
// target tokens of all ranks; RL's batch-mean baseline and 1/B too), so the sum of the
// ranks' gradients is the one-process gradient of the same batch. That sum
// is one all-reduce over the one gradient allocation (MPI on the CPU; NCCL between GPUs,
// cuda/device.cuh), before the clip and the AdamW step, which every rank then takes
// identically: the parameters never need a broadcast.
//
// Tricks worth knowing:
// - The randomness is counter-based per (seed, step, global row), so a row's lambda coin and
//   its sampled completion do not depend on which rank handles it.
// - MPI starts only when mpirun launched the process (its environment says so): a plain
//   ./gkd of an MPI build never touches MPI, and an MPI launch of a build without MPI is
//   refused instead of running N independent copies that overwrite each other.
// - Stopping is collective: the ranks agree on a signal every step (one integer
//   all-reduce), so all stop after the same step and none waits in a collective for a rank
//   that left. A rank that dies is noticed by mpirun, which ends the job.
// - Errors in the set-up (bad flags, files, data) are agreed on too: the lowest rank that
//   failed prints its one line, and every rank exits with status 1.
//
// Part of gkd.cu's single translation unit. The only file outside cuda/ that knows whether
// the build has MPI.
#pragma once
#include <cstdlib>
#include <functional>
#include <string>

#ifdef GKD_MPI
#include <mpi.h>
constexpr bool BUILD_HAS_MPI = true;
#else
constexpr bool BUILD_HAS_MPI = false;
#endif

struct Ranks {
    int rank = 0, size = 1;  // this process, of how many
    int local_rank = 0;      // among the ranks on this machine: which GPU it drives
    bool mpi = false;        // MPI_Init was called
    bool root() const { return rank == 0; }
    // the first of this rank's share of n items (prompts), and how many
    int first_of(int n) const { return share_begin(n, rank, size); }
    int share_of(int n) const { return share_begin(n, rank + 1, size) - first_of(n); }
    // "" for one process, " (rank R of N)" otherwise: appended to what a rank prints
    std::string tag() const { return size == 1 ? "" : strf(" (rank %d of %d)", rank, size); }
};

static Ranks& world() {
    static Ranks r;
    return r;
}

// The size mpirun (OpenMPI, or a PMI launcher) gave this process, or 0 when not launched by one.
static int launcher_size() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
        if (const char* v = getenv(name)) return atoi(v);
    return 0;
}

// Starts MPI when mpirun launched this process (even as its only rank: mpirun -np 1 runs
// the collectives, NCCL's included, over one rank).
[[maybe_unused]] static void ranks_init(int* argc, char*** argv) {
    const int launched = launcher_size();
    if (launched == 0 || (!BUILD_HAS_MPI && launched == 1)) return;
#ifdef GKD_MPI
    Ranks& w = world();
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &w.local_rank);
    MPI_Comm_free(&local);
    w.mpi = true;
#else
    (void)argc; (void)argv;
    GKD_FAIL("launched as one of %d ranks, but this build has no MPI (make found no mpicxx): every rank would run the "
             "whole job; apt-get install libopenmpi-dev openmpi-bin and rebuild, or run ./gkd without mpirun", launched);
#endif
}

[[maybe_unused]] static void ranks_finalize() {
#ifdef GKD_MPI
    if (world().mpi) MPI_Finalize();
    world().mpi = false;
#endif
}

// Ends every rank now (after an error on this one): no rank is left waiting in a collective.
[[noreturn, maybe_unused]] static void abort_all_ranks(int status) {
#ifdef GKD_MPI
    if (world().mpi) MPI_Abort(MPI_COMM_WORLD, status);
#endif
    exit(status);
}

// x (n) <- its sum over the ranks, on every rank (in place; a no-op for one process).
static void sum_across_ranks(double* x, int n) {
#ifdef GKD_MPI
    if (world().mpi) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x; (void)n;
#endif
}
static void sum_across_ranks(float* x, size_t n) {
#ifdef GKD_MPI
    const size_t chunk = (size_t)1 << 30;  // MPI counts are ints
    if (world().mpi)
        for (size_t at = 0; at < n; at += chunk)
            MPI_Allreduce(MPI_IN_PLACE, x + at, (int)std::min(chunk, n - at), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x; (void)n;
#endif
}
static int max_across_ranks(int x) {
#ifdef GKD_MPI
    if (world().mpi) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
    return x;
}
static int min_across_ranks(int x) {
#ifdef GKD_MPI
    if (world().mpi) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
#endif
    return x;
}

// Thrown to leave the program with a status, past the callers (after a signal, or when
// another rank reported the error).
struct ExitRequest {
    int status;
};

// Runs a set-up step on every rank, and agrees on its outcome: when it failed anywhere, the
// lowest failing rank reports (one line, naming the rank) and every rank leaves with
// status 1. One process: the error propagates as usual.
static void on_every_rank(const std::function<void()>& setup) {
    Ranks& w = world();
    std::string error;
    try {
        setup();
    } catch (const GkdError& e) {
        if (w.size == 1) throw;
        error = e.what();
    }
    const int failed = min_across_ranks(error.empty() ? w.size : w.rank);
    if (failed == w.size) return;
    if (failed == w.rank) fprintf(stderr, "gkd: error%s: %s\n", w.tag().c_str(), error.c_str());
    throw ExitRequest{1};
}

// A failure every rank meets at the same point (a value all of them summed): the root
// reports it, the others leave quietly with the same status.
[[noreturn]] static void fail_on_every_rank(const std::string& message) {
    if (world().root()) throw GkdError(message);
    throw ExitRequest{1};
}
