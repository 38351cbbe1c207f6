"""Python client of attention.v1.AttentionService (grpcio + numpy).

    from attention_client import Client
    with Client("127.0.0.1:50051") as client:
        o = client.attention(q, k, v, causal=True)

The generated modules of the contract (attention.v1.attention_pb2 and _pb2_grpc) must be
importable: run client/python/generate_stubs.py once and put its output directory on sys.path.
"""
from attention_client.client import (AttentionError, Client, bfloat16_bits, channel_target,
                                     float32_from_bfloat16)

__all__ = ["AttentionError", "Client", "bfloat16_bits", "channel_target",
           "float32_from_bfloat16"]
