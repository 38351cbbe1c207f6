#!/usr/bin/env python3
"""Runs PyTorch SDPA's flash backend (FlashAttention-2) on one cell of the standard grid a few
times, so that a profiler (ncu) can compare its kernel with ours on the same shape.

  sdpa_one_cell.py HEAD_DIM CAUSAL SEQLEN [--dtype bf16|fp16]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("head_dim", type=int)
ap.add_argument("causal", type=int)
ap.add_argument("seqlen", type=int)
ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
args = ap.parse_args()
dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
batch, heads = max(1, 16384 // args.seqlen), 2048 // args.head_dim
q = torch.randn(batch, heads, args.seqlen, args.head_dim, device="cuda", dtype=dtype)
k, v = torch.randn_like(q), torch.randn_like(q)
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    for _ in range(6):
        F.scaled_dot_product_attention(q, k, v, is_causal=bool(args.causal))
torch.cuda.synchronize()
