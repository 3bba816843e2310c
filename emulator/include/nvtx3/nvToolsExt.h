// emulator/include/nvtx3/nvToolsExt.h — NVTX ranges name phases in Nsight's timeline;
// the emulator has no timeline, so they do nothing.
#pragma once
inline int nvtxRangePushA(const char*) { return 0; }
inline int nvtxRangePop() { return 0; }
