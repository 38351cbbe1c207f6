"""Python client of attention.v1.AttentionService (grpcio + numpy).

    from attention_client import Client
    with Client("127.0.0.1:50051") as client:
        o = client.attention(q, k, v, causal=True)

K/V sessions (the server keeps the context; a decode step sends q and the new k, v): see
attention_client.session (SessionClient).

The generated modules of the contract (attention.v1.attention_pb2 and _pb2_grpc) must be
importable: run client/python/generate_stubs.py once and put its output directory on sys.path.
"""
from attention_client.client import (E4M3_MAX, AttentionError, Client, bfloat16_bits,
                                     channel_target, e4m3_decode, e4m3_encode,
                                     float32_from_bfloat16, quantize_e4m3)
from attention_client.session import Session, SessionClient

__all__ = ["E4M3_MAX", "AttentionError", "Client", "Session", "SessionClient", "bfloat16_bits",
           "channel_target", "e4m3_decode", "e4m3_encode", "float32_from_bfloat16",
           "quantize_e4m3"]
