#!/usr/bin/env python3
"""The Python session client (client/python/attention_client/session.py) against a running
attention_server on the CPU backend:

    python_session_test.py --target=HOST:PORT

Sessions of every dtype prefilled with append, then decode and verify steps with k_new / v_new,
a fork that diverges, a truncate, key-range partials merged back, each answer against a float64
numpy reference over the session's whole history; errors surface as AttentionError with the
server's code. Exit code 77 (skip) when grpcio or numpy is missing.
"""
import sys
import unittest

# First: skips (77) without grpcio or numpy, and makes attention_client importable.
import python_test_setup

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from attention_client import (AttentionError, SessionClient, bfloat16_bits,  # noqa: E402
                              float32_from_bfloat16)

ARGS = None
TOLERANCE = {np.float32: 1e-4, np.float16: 2e-3, np.uint16: 1.6e-2}
NAMES = {np.float32: "float32", np.float16: "float16", np.uint16: "bfloat16"}


def reference(q, k, v, causal, window=(-1, -1), key_range=None):
    """float64 attention of q [n, heads, d] against k, v [L, kv_heads, d]: row r sits at key
    position L - n + r (bottom-right); returns o [n, heads, d] and lse [heads, n]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    n, heads, d = q.shape
    length, kv_heads = k.shape[0], k.shape[1]
    k = np.repeat(k, heads // kv_heads, axis=1)
    v = np.repeat(v, heads // kv_heads, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
    pos = np.arange(n)[:, None] + length - n
    j = np.arange(length)[None, :]
    allowed = np.ones((n, length), bool)
    left, right = window
    if causal:
        right = 0
    if left >= 0:
        allowed &= j >= pos - left
    if right >= 0:
        allowed &= j <= pos + right
    if key_range is not None:
        allowed &= (j >= key_range[0]) & (j < key_range[1])
    s = np.where(allowed[None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m_safe)
    l = p.sum(axis=-1, keepdims=True)
    o = np.einsum("hqk,khd->qhd", p / np.where(l > 0, l, 1), v)
    lse = np.where(l[..., 0] > 0, m_safe[..., 0] + np.log(np.where(l > 0, l, 1))[..., 0], -np.inf)
    return o, lse


class Model:
    """A session's rows as float32 (the values the server holds), per layer."""

    def __init__(self, layers, kv_heads, head_dim):
        self.k = [np.zeros((0, kv_heads, head_dim), np.float32) for _ in range(layers)]
        self.v = [np.zeros((0, kv_heads, head_dim), np.float32) for _ in range(layers)]

    def append(self, layer, k, v):
        self.k[layer] = np.concatenate([self.k[layer], k])
        self.v[layer] = np.concatenate([self.v[layer], v])

    def fork(self, prefix):
        child = Model(0, 0, 0)
        child.k = [x[:prefix].copy() for x in self.k]
        child.v = [x[:prefix].copy() for x in self.v]
        return child


def rows(rng, dtype, shape):
    """Random values in [-1, 1] in `dtype` (uint16: bfloat16 bits) and as float32."""
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    if dtype == np.uint16:
        bits = bfloat16_bits(x)
        return bits, float32_from_bfloat16(bits)
    x = x.astype(dtype)
    return x, x.astype(np.float32)


def as_float(o, dtype):
    return float32_from_bfloat16(o) if dtype == np.uint16 else o.astype(np.float32)


class SessionTest(unittest.TestCase):
    def step(self, session, model, layer, dtype, rng, n_new=1, append=True, **options):
        kv_heads, head_dim = model.k[layer].shape[1:]
        q, q32 = rows(rng, dtype, (n_new, 2 * kv_heads, head_dim))
        extra = {}
        if append:
            k, k32 = rows(rng, dtype, (n_new, kv_heads, head_dim))
            v, v32 = rows(rng, dtype, (n_new, kv_heads, head_dim))
            extra = {"k_new": k, "v_new": v}
            model.append(layer, k32, v32)
        o, lse = session.attend(layer, q, return_lse=True, **extra, **options)
        want_o, want_lse = reference(q32, model.k[layer], model.v[layer],
                                     options.get("causal", False),
                                     options.get("window", (-1, -1)), options.get("key_range"))
        tol = TOLERANCE[dtype]
        np.testing.assert_allclose(as_float(o, dtype), want_o, atol=tol, rtol=tol)
        np.testing.assert_allclose(lse, want_lse, atol=1e-3, rtol=1e-4)
        return o, lse

    def test_sessions_of_every_dtype(self):
        rng = np.random.default_rng(3)
        with SessionClient(ARGS.target) as client:
            for dtype in (np.float32, np.float16, np.uint16):
                session = client.create_session(layers=2, kv_heads=2, head_dim=16,
                                                dtype=NAMES[dtype])
                self.assertTrue(session.id.endswith("@" + session.replica))
                model = Model(2, 2, 16)
                for layer in range(2):
                    k, k32 = rows(rng, dtype, (40, 2, 16))
                    v, v32 = rows(rng, dtype, (40, 2, 16))
                    self.assertEqual(session.append(layer, k, v), 40)
                    model.append(layer, k32, v32)
                for i in range(4):
                    for layer in range(2):
                        self.step(session, model, layer, dtype, rng, causal=True)
                        self.step(session, model, layer, dtype, rng, n_new=3, causal=True,
                                  window=(8, 0))
                info = session.info()
                self.assertEqual(list(info.tokens), [len(model.k[0]), len(model.k[1])])
                session.release()
                with self.assertRaises(AttentionError) as caught:
                    session.info()
                self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
                self.assertIn("was released", caught.exception.message)

    def test_fork_truncate_and_key_ranges(self):
        rng = np.random.default_rng(5)
        dtype = np.float32
        with SessionClient(ARGS.target) as client:
            parent = client.create_session(layers=1, kv_heads=1, head_dim=32, dtype="float32")
            model = Model(1, 1, 32)
            k, k32 = rows(rng, dtype, (50, 1, 32))
            v, v32 = rows(rng, dtype, (50, 1, 32))
            parent.append(0, k, v)
            model.append(0, k32, v32)
            child = parent.fork(30)
            child_model = model.fork(30)
            for _ in range(3):
                self.step(child, child_model, 0, dtype, rng, n_new=2, causal=True)
                self.step(parent, model, 0, dtype, rng, causal=True)
            parent.truncate(45)
            model = model.fork(45)
            self.step(parent, model, 0, dtype, rng, causal=True)
            # Two partials of disjoint key ranges merge (natural log) into the whole answer.
            q, q32 = rows(rng, dtype, (2, 2, 32))
            o_a, lse_a = parent.attend(0, q, causal=True, return_lse=True, key_range=(0, 20))
            o_b, lse_b = parent.attend_async(0, q, causal=True, return_lse=True,
                                             key_range=(20, 10 ** 6)).result(timeout=30)
            lse = np.logaddexp(lse_a, lse_b)
            o = (np.exp(lse_a - lse).T[:, :, None] * o_a + np.exp(lse_b - lse).T[:, :, None] * o_b)
            want_o, want_lse = reference(q32, model.k[0], model.v[0], True)
            np.testing.assert_allclose(o, want_o, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(lse, want_lse, atol=1e-3, rtol=1e-4)

    def test_errors(self):
        with SessionClient(ARGS.target) as client:
            with self.assertRaises(AttentionError) as caught:
                client.create_session(layers=0, kv_heads=1, head_dim=16)
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("layers", caught.exception.message)
            session = client.create_session(layers=1, kv_heads=2, head_dim=16, dtype="float32")
            q = np.zeros((1, 3, 16), np.float32)
            with self.assertRaises(AttentionError) as caught:
                session.attend(0, q)
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("multiple of the session's kv_heads", caught.exception.message)
            other = client.attach(session.id.partition("@")[0] + "@elsewhere")
            with self.assertRaises(AttentionError) as caught:
                other.info()
            self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("held by replica elsewhere", caught.exception.message)
            session.release()


def main():
    global ARGS
    ARGS, rest = python_test_setup.parse_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
