// emulator/include/nccl.h — the NCCL calls gkd makes (cuda/common.cuh), over MPI: in the
// emulated build device memory is host memory, so a GPU rank's all-reduce is MPI's, and
// `mpirun -np 2 build/emulator/gkd ... --device cuda` runs data parallel as on two GPUs.
// The sum is MPI_Allreduce's, over MPI_COMM_WORLD (gkd's one communicator), on the stream's
// turn: recorded like any work while a graph captures.
#pragma once
#include <mpi.h>

#include "../runtime.h"

typedef enum { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5 } ncclResult_t;
typedef enum { ncclFloat = 7 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;
typedef struct { char internal[128]; } ncclUniqueId;
struct ncclComm {
    int ranks, rank;
};
typedef ncclComm* ncclComm_t;

inline const char* ncclGetErrorString(ncclResult_t r) {
    return r == ncclSuccess ? "no error" : r == ncclInvalidArgument ? "invalid argument (a pointer outside device memory?)"
         : r == ncclInvalidUsage ? "invalid usage" : "system error (MPI)";
}
inline ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "gkd-emulated-nccl");
    return ncclSuccess;
}
inline ncclResult_t ncclCommInitRank(ncclComm_t* comm, int ranks, ncclUniqueId id, int rank) {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (strcmp(id.internal, "gkd-emulated-nccl") != 0 || ranks != size || rank < 0 || rank >= ranks)
        return ncclInvalidUsage;
    *comm = new ncclComm{ranks, rank};
    return ncclSuccess;
}
inline ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    delete comm;
    return ncclSuccess;
}
// MPI's errors are reported by the call that met them: nothing is left pending
inline ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
    if (!comm || !state) return ncclInvalidArgument;
    *state = ncclSuccess;
    return ncclSuccess;
}
inline ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                                  ncclComm_t comm, cudaStream_t stream) {
    if (!comm || type != ncclFloat || op != ncclSum) return ncclInvalidArgument;
    const size_t bytes = count * sizeof(float);
    if (!emu::allocation_of(send, bytes) || !emu::allocation_of(recv, bytes)) return ncclInvalidArgument;
    auto w = std::make_shared<emu::Work>();
    w->what = "ncclAllReduce";
    w->run = [=] {
        const int r = MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, MPI_FLOAT, MPI_SUM,
                                    MPI_COMM_WORLD);
        return r == MPI_SUCCESS ? cudaSuccess : emu::fail(cudaErrorLaunchFailure, "ncclAllReduce: MPI_Allreduce failed", true);
    };
    return emu::enqueue(stream, w) == cudaSuccess ? ncclSuccess : ncclSystemError;
}
