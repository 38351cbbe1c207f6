#!/usr/bin/env python3
"""The Python client (client/python) against a running server.

    python_client_test.py --target=HOST:PORT --mode=fake|real

fake: fake_attention_server --unavailable_times=2 (echoes q as o): dtypes and shapes round trip,
      UNAVAILABLE surfaces without retries and is retried with them.
real: attention_server --backend=cpu: answers match a float64 numpy reference; server errors
      and deadlines surface as AttentionError.
Exit code 77 (skip) when grpcio or numpy is missing.
"""
import sys
import unittest

# First: skips (77) without grpcio or numpy, and makes attention_client importable.
import python_test_setup

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from attention_client import (AttentionError, Client, bfloat16_bits, channel_target,  # noqa: E402
                              e4m3_decode, e4m3_encode, float32_from_bfloat16, quantize_e4m3)

ARGS = None


def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None, sinks=None):
    """float64 attention, dense layout, FlashAttention semantics (bottom-right alignment); with
    sinks ([heads] logits), each row's denominator gains e^(sink - m) and its lse the sink."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k, kv_heads = k.shape[1], k.shape[2]
    k = np.repeat(k, heads // kv_heads, axis=2)
    v = np.repeat(v, heads // kv_heads, axis=2)
    scale = 1 / np.sqrt(head_dim) if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    pos = np.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q
    j = np.arange(seqlen_k)[None, :]
    allowed = np.ones((seqlen_q, seqlen_k), bool)
    if left >= 0:
        allowed &= j >= pos - left
    if right >= 0:
        allowed &= j <= pos + right
    s = np.where(allowed, s, -np.inf)
    if sinks is not None:
        # The sink is one more logit per head with no value vector: a column of its own.
        sink = np.broadcast_to(np.asarray(sinks, np.float64)[None, :, None, None],
                               s.shape[:3] + (1,))
        s = np.concatenate([s, sink], axis=-1)
        v = np.concatenate([v, np.zeros((batch, 1) + v.shape[2:])], axis=1)
    m = s.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m_safe)
    l = p.sum(axis=-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p / np.where(l > 0, l, 1), v)
    lse = np.where(l[..., 0] > 0, m_safe[..., 0] + np.log(np.where(l > 0, l, 1))[..., 0], -np.inf)
    return o, lse


class FakeServerTest(unittest.TestCase):
    def test_dtypes_round_trip(self):
        rng = np.random.default_rng(1)
        with Client(ARGS.target) as client:
            for dtype in (np.float32, np.float16, np.uint16):
                q = rng.standard_normal((2, 7, 4, 16)).astype(np.float32)
                q = bfloat16_bits(q) if dtype == np.uint16 else q.astype(dtype)
                k = v = q[:, :5, :2]
                o, lse = client.attention(q, k, v, causal=True, return_lse=True)
                self.assertEqual(o.dtype, q.dtype)
                np.testing.assert_array_equal(o, q)
                self.assertEqual(lse.shape, (2, 4, 7))
                self.assertEqual(lse.dtype, np.float32)

    def test_async(self):
        q = np.arange(2 * 3 * 1 * 8, dtype=np.float32).reshape(2, 3, 1, 8)
        with Client(ARGS.target) as client:
            futures = [client.attention_async(q + i, q, q) for i in range(8)]
            for i, future in enumerate(futures):
                np.testing.assert_array_equal(future.result(timeout=30), q + i)

    # The fake server fails its first two unary calls with UNAVAILABLE; unittest runs tests in
    # name order, so this one ("test_a_...") makes them.
    def test_a_unavailable_is_raised_without_retries_and_retried_with_them(self):
        q = np.ones((1, 2, 1, 4), np.float32)
        with Client(ARGS.target, retry_attempts=1) as client:
            with self.assertRaises(AttentionError) as caught:
                client.attention(q, q, q)
            self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(caught.exception.message, "fake: draining")
        with Client(ARGS.target, retry_attempts=3) as client:
            np.testing.assert_array_equal(client.attention(q, q, q), q)

    def test_rejects_unsupported_dtypes(self):
        q = np.ones((1, 2, 1, 4), np.float64)
        with Client(ARGS.target) as client:
            with self.assertRaisesRegex(TypeError, "q: dtype float64"):
                client.attention(q, q, q)

    def test_channel_target(self):
        self.assertEqual(channel_target("10.0.0.1:1,10.0.0.2:2"), "ipv4:10.0.0.1:1,10.0.0.2:2")
        self.assertEqual(channel_target("[::1]:1,[::1]:2"), "ipv6:[::1]:1,[::1]:2")
        self.assertEqual(channel_target("localhost:50051"), "localhost:50051")
        with self.assertRaises(ValueError):
            channel_target("a.example:1,b.example:2")

    def test_e4m3_conversions(self):
        codes = np.arange(256, dtype=np.uint8)
        values = e4m3_decode(codes)
        self.assertEqual(values[0x38], 1.0)
        self.assertEqual(values[0x7E], 448.0)
        self.assertEqual(values[0x01], 2.0 ** -9)
        self.assertTrue(np.isnan(values[0x7F]) and np.isnan(values[0xFF]))
        finite = ~np.isnan(values)
        # Every code round-trips (-0 keeps its sign bit).
        np.testing.assert_array_equal(e4m3_encode(values[finite]), codes[finite])
        # Against the nearest code by brute force, ties to the even code.
        x = np.random.default_rng(3).uniform(-500, 500, 20000).astype(np.float32)
        x = np.concatenate([x, x / 1000, x / 1e5])
        positive = values[:0x7F]  # 0 .. 448, ascending
        got = e4m3_decode(e4m3_encode(x))
        distance = np.abs(np.abs(x)[:, None] - positive[None, :])
        best = distance.min(axis=1)
        ties = (np.sum(distance == best[:, None], axis=1) > 1)
        nearest = positive[np.argmin(distance, axis=1)] * np.sign(x)
        beyond = np.abs(x) >= 464
        np.testing.assert_array_equal(got[~ties & ~beyond], nearest[~ties & ~beyond])
        np.testing.assert_array_equal(got[beyond], 448 * np.sign(x[beyond]))
        # Midpoints go to the even code.
        mids = (positive[:-1] + positive[1:]) / 2
        want = np.where(np.arange(len(mids)) % 2 == 0, np.arange(len(mids)),
                        np.arange(len(mids)) + 1)
        np.testing.assert_array_equal(e4m3_encode(mids), want.astype(np.uint8))
        self.assertEqual(e4m3_encode(np.float32(np.nan)), 0x7F)
        self.assertEqual(e4m3_encode(np.float32(3.0), 0.5), 0x4C)  # 6 = 1.5 x 2^2

    def test_quantize_e4m3(self):
        x = np.random.default_rng(4).standard_normal((2, 5, 3, 16)).astype(np.float32)
        x[:, :, 2] *= 100  # head 2 is far larger
        for per_head in (False, True):
            codes, descale = quantize_e4m3(x, per_head=per_head)
            self.assertEqual(codes.dtype, np.uint8)
            self.assertEqual(codes.shape, x.shape)
            self.assertEqual(descale.shape, (3,) if per_head else (1,))
            factors = descale[:, None] if per_head else descale
            back = e4m3_decode(codes) * factors
            # 3 mantissa bits: within 2^-4 relative, plus the subnormal step near zero.
            bound = np.abs(x) / 16 + factors * 2.0 ** -10
            self.assertTrue(np.all(np.abs(back - x) <= bound))
            self.assertEqual(np.abs(e4m3_decode(codes)).max(), 448.0)
        with self.assertRaises(ValueError):
            quantize_e4m3(np.ones(4, np.float32))

    def test_bfloat16_conversions(self):
        x = np.array([1.0, -2.5, 3.14159, 1e-3, np.inf, np.nan], np.float32)
        back = float32_from_bfloat16(bfloat16_bits(x))
        np.testing.assert_allclose(back[:4], x[:4], rtol=2 ** -8)
        self.assertTrue(np.isinf(back[4]) and np.isnan(back[5]))
        self.assertEqual(bfloat16_bits(np.float32(1.0)), 0x3F80)


class RealServerTest(unittest.TestCase):
    TOLERANCE = {np.float32: 1e-4, np.float16: 2e-3, np.uint16: 1.6e-2}

    def check(self, client, dtype, shape_q, shape_kv, **options):
        rng = np.random.default_rng(abs(hash((dtype, shape_q, shape_kv))) % 2 ** 32)
        q32, k32, v32 = (rng.uniform(-1, 1, s).astype(np.float32)
                         for s in (shape_q, shape_kv, shape_kv))
        if dtype == np.uint16:
            q, k, v = (bfloat16_bits(x) for x in (q32, k32, v32))
            q32, k32, v32 = (float32_from_bfloat16(x) for x in (q, k, v))
        else:
            q, k, v = (x.astype(dtype) for x in (q32, k32, v32))
            q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
        o, lse = client.attention(q, k, v, return_lse=True, **options)
        self.assertEqual(o.dtype, q.dtype)
        got = float32_from_bfloat16(o) if dtype == np.uint16 else o.astype(np.float64)
        want, want_lse = reference(q32, k32, v32, causal=options.get("causal", False),
                                   window=options.get("window", (-1, -1)),
                                   softcap=options.get("softcap", 0.0),
                                   scale=options.get("softmax_scale"),
                                   sinks=options.get("sinks"))
        tol = self.TOLERANCE[dtype]
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
        np.testing.assert_allclose(lse, want_lse, atol=1e-3, rtol=1e-4)

    def test_matches_reference(self):
        with Client(ARGS.target) as client:
            for dtype in (np.float32, np.float16, np.uint16):
                self.check(client, dtype, (2, 9, 4, 64), (2, 13, 2, 64), causal=True)
                self.check(client, dtype, (1, 16, 2, 32), (1, 16, 1, 32), window=(3, 2),
                           softcap=10.0, softmax_scale=0.2)
                # Sinks, with rows that see no key (causal, more queries than keys).
                self.check(client, dtype, (2, 7, 4, 32), (2, 5, 2, 32), causal=True,
                           sinks=np.array([0.5, -1.0, 2.0, 0.0], np.float32))

    def test_precision_levels(self):
        rng = np.random.default_rng(7)
        q = rng.uniform(-1, 1, (1, 8, 2, 32)).astype(np.float32)
        with Client(ARGS.target) as client:
            for name in ("full", "tf32", "bf16"):
                o = client.attention(q, q, q, precision=name)
                want, _ = reference(q, q, q)
                # Every level is at least as accurate as its documented bound; the CPU backend
                # computes every level at full precision.
                np.testing.assert_allclose(o, want, atol=2e-2, rtol=2e-2, err_msg=name)
            with self.assertRaises(ValueError):
                client.attention(q, q, q, precision="fp8")

    def test_packed_layout(self):
        rng = np.random.default_rng(5)
        q = rng.uniform(-1, 1, (10, 2, 32)).astype(np.float32)
        k = rng.uniform(-1, 1, (14, 2, 32)).astype(np.float32)
        v = rng.uniform(-1, 1, (14, 2, 32)).astype(np.float32)
        with Client(ARGS.target) as client:
            o = client.attention(q, k, v, cu_seqlens_q=[0, 4, 10], cu_seqlens_k=[0, 8, 14],
                                 causal=True)
        for b, (q0, q1, k0, k1) in enumerate([(0, 4, 0, 8), (4, 10, 8, 14)]):
            want, _ = reference(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal=True)
            np.testing.assert_allclose(o[q0:q1], want[0], atol=1e-4, rtol=1e-4, err_msg=f"{b}")

    def test_async_many_in_flight(self):
        rng = np.random.default_rng(6)
        inputs = [rng.uniform(-1, 1, (3, 1, 8, 32, 64)).astype(np.float32) for _ in range(16)]
        with Client(ARGS.target) as client:
            futures = [client.attention_async(x[0], x[1], x[2]) for x in inputs]
            for x, future in zip(inputs, futures):
                want, _ = reference(x[0], x[1], x[2])
                np.testing.assert_allclose(future.result(timeout=60), want, atol=1e-4, rtol=1e-4)

    def test_fp8_matches_reference_on_dequantized_inputs(self):
        rng = np.random.default_rng(5)
        with Client(ARGS.target) as client:
            for per_head, causal in ((False, False), (True, True)):
                q32 = rng.standard_normal((2, 33, 4, 64)).astype(np.float32)
                k32 = rng.standard_normal((2, 47, 2, 64)).astype(np.float32)
                v32 = rng.standard_normal((2, 47, 2, 64)).astype(np.float32)
                (q, qd), (k, kd), (v, vd) = (quantize_e4m3(x, per_head=per_head)
                                             for x in (q32, k32, v32))
                o, lse = client.attention(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd,
                                          causal=causal, return_lse=True)
                self.assertEqual(o.shape, q.shape)
                got = float32_from_bfloat16(o) if o.dtype == np.uint16 else o.astype(np.float32)
                # The reference reads the dequantized values: codes x their factors.
                deq = [e4m3_decode(c) * (d[:, None] if per_head else d)
                       for c, d in ((q, qd), (k, kd), (v, vd))]
                want, want_lse = reference(*deq, causal=causal)
                np.testing.assert_allclose(got, want, atol=1.6e-2, rtol=1.6e-2)
                np.testing.assert_allclose(lse, want_lse, atol=1e-3, rtol=1e-4)
            # Descales belong to FP8 inputs only.
            with self.assertRaises(AttentionError) as caught:
                client.attention(q32, k32, v32, q_descale=1.0)
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("q_descale", caught.exception.message)

    def test_server_errors(self):
        q = np.zeros((1, 4, 3, 16), np.float32)
        kv = np.zeros((1, 4, 2, 16), np.float32)
        with Client(ARGS.target) as client:
            with self.assertRaises(AttentionError) as caught:
                client.attention(q, kv, kv)
            self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("heads", caught.exception.message)
            big = np.zeros((4, 512, 16, 128), np.float32)
            with self.assertRaises(AttentionError) as caught:
                client.attention(big, big, big, timeout=1e-6)
            self.assertEqual(caught.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)


def main():
    global ARGS
    ARGS, rest = python_test_setup.parse_args(
        lambda parser: parser.add_argument("--mode", choices=("fake", "real"), required=True))
    suite = FakeServerTest if ARGS.mode == "fake" else RealServerTest
    tests = unittest.defaultTestLoader.loadTestsFromTestCase(suite)
    result = unittest.TextTestRunner(verbosity=2).run(tests)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
