// cuda_check.h: the GPU test programs' error checks: print the call and CUDA's message, fail.
#pragma once
#include <cstdio>
#include <cuda.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            std::printf("FAIL %s: %s\n", #call, cudaGetErrorString(e_));                           \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_CU(call)                                                                             \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            std::printf("FAIL %s: CUresult %d\n", #call, (int)r_);                                 \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)
