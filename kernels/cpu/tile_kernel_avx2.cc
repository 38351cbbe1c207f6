// The tile kernel for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c; attention_cpu.cc
// calls it only when the CPU has them). Register block 6 keys x 16 query columns: 12 ymm
// accumulators, 2 column vectors and 1 broadcast of the 16 ymm registers.
#define ATTN_CPU_KERNEL_NS avx2
#define ATTN_CPU_VECTOR_BYTES 32
#define ATTN_CPU_KERNEL_ROWS 6
#define ATTN_CPU_USE_F16C 1
#include "kernels/cpu/tile_kernel_impl.h"
