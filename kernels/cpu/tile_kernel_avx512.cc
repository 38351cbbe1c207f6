// The tile kernel for AVX-512 F/BW/DQ/VL + FMA + F16C (compiled with those flags;
// attention_cpu.cc calls it only when the CPU and the OS support them). Register block 12 keys x
// 32 query columns: 24 zmm accumulators, 2 column vectors and 1 broadcast of the 32 zmm registers.
#define ATTN_CPU_KERNEL_NS avx512
#define ATTN_CPU_VECTOR_BYTES 64
#define ATTN_CPU_KERNEL_ROWS 12
#define ATTN_CPU_USE_F16C 1
#include "kernels/cpu/tile_kernel_impl.h"
