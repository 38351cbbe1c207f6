// The tile kernel for AVX-512 F/BW/DQ/VL + FMA + F16C (compiled with those flags;
// attention_cpu.cc calls it only when the CPU and the OS support them). Register block 8 keys x
// 32 query columns: 16 zmm accumulators; 8 divides the usual head_dim and block_k, so there is no
// tail block (12 x 32, 24 accumulators, left tails of 4 and 8 rows for head_dim 64 and 128).
#define ATTN_CPU_KERNEL_NS avx512
#define ATTN_CPU_VECTOR_BYTES 64
#define ATTN_CPU_KERNEL_ROWS 8
#define ATTN_CPU_USE_F16C 1
#include "kernels/cpu/tile_kernel_impl.h"
