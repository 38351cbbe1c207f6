// The tile kernel for any CPU: 128-bit vectors with the baseline compiler flags (SSE2 on
// x86-64, NEON on Arm64). Register block 6 keys x 8 query columns: 12 accumulators of the 16
// vector registers SSE2 has.
#define ATTN_CPU_KERNEL_NS generic
#define ATTN_CPU_VECTOR_BYTES 16
#define ATTN_CPU_KERNEL_ROWS 6
#include "kernels/cpu/tile_kernel_impl.h"
