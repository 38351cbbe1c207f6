#!/usr/bin/env python3
"""The Python client's backward pass (Client.attention_backward) against attention_server --backend=cpu.

    python_backward_test.py --target=HOST:PORT

dq, dk and dv of a forward answered by the server (o and lse with return_lse=True) match a float64
numpy reference (dense, causal bottom-right with seqlen_q != seqlen_k, GQA; float32 and bfloat16
bits), one gradient element agrees with central finite differences of sum(o * grad_o) taken
through the forward RPC, and a malformed lse surfaces as AttentionError INVALID_ARGUMENT naming
the field. Exit code 77 (skip) when grpcio or numpy is missing.
"""
import os
import sys
import unittest

# tests/client/python_test_setup.py: skips (77) without grpcio or numpy; attention_client imports.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "client"))
import python_test_setup  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from attention_client import (AttentionError, Client, bfloat16_bits,  # noqa: E402
                              float32_from_bfloat16)

ARGS = None


def reference_grads(q, k, v, grad_o, causal):
    """float64 dq, dk, dv of sum(o * grad_o), dense layout, from the definition."""
    q, k, v, grad_o = (np.asarray(x, np.float64) for x in (q, k, v, grad_o))
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k, kv_heads = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(head_dim)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    rows = np.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q
    allowed = np.arange(seqlen_k)[None, :] <= rows if causal else np.ones((seqlen_q, seqlen_k), bool)
    for b in range(batch):
        for h in range(heads):
            g = h // (heads // kv_heads)
            s = np.where(allowed, scale * q[b, :, h] @ k[b, :, g].T, -np.inf)
            m = np.max(s, axis=1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            e = np.where(allowed, np.exp(s - m), 0.0)
            total = e.sum(axis=1, keepdims=True)
            p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
            dp = grad_o[b, :, h] @ v[b, :, g].T
            ds = p * (dp - (p * dp).sum(axis=1, keepdims=True))
            dq[b, :, h] = scale * ds @ k[b, :, g]
            dk[b, :, g] += scale * ds.T @ q[b, :, h]
            dv[b, :, g] += p.T @ grad_o[b, :, h]
    return dq, dk, dv


class BackwardTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(ARGS.target, timeout=60)
        self.rng = np.random.default_rng(22)

    def tearDown(self):
        self.client.close()

    def inputs(self, seqlen_q=7, seqlen_k=11, heads=4, kv_heads=2, head_dim=12):
        shape_q = (2, seqlen_q, heads, head_dim)
        shape_k = (2, seqlen_k, kv_heads, head_dim)
        return [self.rng.uniform(-1, 1, s).astype(np.float32)
                for s in (shape_q, shape_k, shape_k, shape_q)]

    def check(self, got, want, tol):
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            self.assertEqual(g.shape, w.shape, name)
            err = np.max(np.abs(np.asarray(g, np.float64) - w))
            self.assertLessEqual(err, tol * np.max(np.abs(w)), name)

    def test_float32_matches_reference(self):
        q, k, v, grad_o = self.inputs()
        o, lse = self.client.attention(q, k, v, causal=True, return_lse=True)
        grads = self.client.attention_backward(q, k, v, o, lse, grad_o, causal=True)
        self.assertTrue(all(g.dtype == np.float32 for g in grads))
        self.check(grads, reference_grads(q, k, v, grad_o, causal=True), 2e-5)

    def test_bfloat16_bits_match_reference(self):
        q, k, v, grad_o = (bfloat16_bits(x) for x in self.inputs(seqlen_q=13, seqlen_k=5))
        o, lse = self.client.attention(q, k, v, causal=True, return_lse=True)
        grads = self.client.attention_backward(q, k, v, o, lse, grad_o, causal=True)
        self.assertTrue(all(g.dtype == np.uint16 for g in grads))
        want = reference_grads(*(float32_from_bfloat16(x) for x in (q, k, v, grad_o)), causal=True)
        self.check([float32_from_bfloat16(g) for g in grads], want, 1.5e-2)

    def test_finite_differences_through_the_forward(self):
        q, k, v, grad_o = self.inputs(seqlen_q=5, seqlen_k=5, heads=2, kv_heads=1, head_dim=4)
        o, lse = self.client.attention(q, k, v, return_lse=True)
        dq, _, dv = self.client.attention_backward(q, k, v, o, lse, grad_o)

        def loss(qq, vv):
            return float((self.client.attention(qq, k, vv).astype(np.float64) * grad_o).sum())

        eps = 1e-2
        for which, index, grad in (("q", (1, 2, 1, 3), dq), ("v", (0, 1, 0, 2), dv)):
            plus, minus = (q.copy(), q.copy()) if which == "q" else (v.copy(), v.copy())
            plus[index] += eps
            minus[index] -= eps
            if which == "q":
                fd = (loss(plus, v) - loss(minus, v)) / (2 * eps)
            else:
                fd = (loss(q, plus) - loss(q, minus)) / (2 * eps)
            self.assertAlmostEqual(float(grad[index]), fd, delta=1e-3, msg=which)

    def test_malformed_lse_names_the_field(self):
        q, k, v, grad_o = self.inputs()
        o, lse = self.client.attention(q, k, v, return_lse=True)
        with self.assertRaises(AttentionError) as caught:
            self.client.attention_backward(q, k, v, o, lse[:, :1], grad_o)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("lse.shape", str(caught.exception))


if __name__ == "__main__":
    ARGS, rest = python_test_setup.parse_args()
    unittest.main(argv=[sys.argv[0]] + rest)
