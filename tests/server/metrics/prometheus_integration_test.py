#!/usr/bin/env python3
"""End to end: a real Prometheus scrapes a real attention server, and its query API must show
the requests a client sent.

Starts attention_server (CPU backend) with its gRPC and metrics ports on loopback, starts
/usr/bin/prometheus scraping it every second (its own TSDB in a temporary directory, its own
free loopback port), sends a known mix of requests with attention_metrics_load, then polls
Prometheus's /api/v1/query until the service's counters agree with what was sent:
  attention_requests_total by method and code, attention_request_duration_seconds_count by
  method, requests launched in batches (attention_batch_size_requests_sum), in-flight and
  queue gauges back to 0, the configured queue limit, up == 1, and the process_* and
  build_info series present. With promtool installed, it also lints the server's /metrics.

Usage: prometheus_integration_test.py --server BIN --load BIN [--prometheus BIN]
Exit status: 0 pass, 1 fail, 77 skip (Prometheus not installed).
"""
import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SKIP = 77
UNARY, INVALID, STREAM = 12, 4, 9
MAX_QUEUE_REQUESTS = 4096


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose merged output is kept (and can be waited on line by line)."""

    def __init__(self, name, argv, cwd=None):
        self.name = name
        self.lines = []
        self._queue = queue.Queue()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=cwd)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return None
            m = re.search(pattern, line)
            if m:
                return m
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def dump(self, last=60):
        print(f"--- {self.name} (exit {self.proc.poll()}), last {last} lines ---")
        for line in self.lines[-last:]:
            print(f"  {line}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_http_ok(url, timeout, process):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            return False
        try:
            if http_get(url, timeout=2)[0] == 200:
                return True
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        time.sleep(0.2)
    return False


def query(prom_port, promql):
    """Instant query; returns {frozenset(labels minus __name__): float value}."""
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    _, body = http_get(url)
    answer = json.loads(body)
    if answer.get("status") != "success":
        raise RuntimeError(f"query {promql!r}: {body}")
    result = {}
    for sample in answer["data"]["result"]:
        labels = {k: v for k, v in sample["metric"].items() if k != "__name__"}
        result[frozenset(labels.items())] = float(sample["value"][1])
    return result


def scalar(prom_port, promql):
    values = list(query(prom_port, promql).values())
    return values[0] if len(values) == 1 else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--load", required=True)
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    if not os.access(args.prometheus, os.X_OK):
        print(f"prometheus not installed ({args.prometheus}): skipping")
        return SKIP

    tmp = tempfile.mkdtemp(prefix="attention_prom_it_")
    processes = []
    ok = False
    try:
        metrics_port = free_port()
        server = Process("attention_server", [
            args.server, "--address=127.0.0.1:0", f"--metrics_address=127.0.0.1:{metrics_port}",
            "--backend=cpu", "--cpu_threads=2", "--drain_timeout_s=2",
            f"--max_queue_requests={MAX_QUEUE_REQUESTS}"])
        processes.append(server)
        m = server.wait_for_line(r"listening address=127\.0\.0\.1:(\d+)", timeout=60)
        if not m:
            print("FAIL: the server did not print its listening address")
            return 1
        grpc_port = int(m.group(1))
        if not wait_http_ok(f"http://127.0.0.1:{metrics_port}/metrics", 30, server):
            print(f"FAIL: no /metrics on 127.0.0.1:{metrics_port}")
            return 1

        prom_port = free_port()
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: attention-server\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        prometheus = Process("prometheus", [
            args.prometheus, f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"], cwd=tmp)
        processes.append(prometheus)
        if not wait_http_ok(f"http://127.0.0.1:{prom_port}/-/ready", 60, prometheus):
            print("FAIL: Prometheus did not become ready")
            return 1

        load = subprocess.run([args.load, f"--target=127.0.0.1:{grpc_port}", f"--unary={UNARY}",
                               f"--invalid={INVALID}", f"--stream={STREAM}"],
                              capture_output=True, text=True, timeout=120)
        print(f"load: {load.stdout.strip()} {load.stderr.strip()}")
        if load.returncode != 0:
            print("FAIL: the client's calls did not end as intended")
            return 1
        sent_at = time.time()

        job = 'job="attention-server"'
        expected = [
            (f'sum(attention_requests_total{{{job}, method="Attention", code="OK"}})', UNARY),
            (f'sum(attention_requests_total{{{job}, method="Attention", '
             f'code="INVALID_ARGUMENT"}})', INVALID),
            (f'sum(attention_requests_total{{{job}, method="AttentionStream", code="OK"}})',
             STREAM),
            (f'sum(attention_requests_total{{{job}}})', UNARY + INVALID + STREAM),
            (f'sum(attention_request_duration_seconds_count{{{job}, method="Attention"}})',
             UNARY + INVALID),
            (f'sum(attention_request_duration_seconds_count{{{job}, method="AttentionStream"}})',
             STREAM),
            (f'sum(attention_request_duration_seconds_bucket{{{job}, le="+Inf"}})',
             UNARY + INVALID + STREAM),
            # Every valid request ran in exactly one launch.
            (f'sum(attention_batch_size_requests_sum{{{job}}})', UNARY + STREAM),
            (f'sum(attention_in_flight_requests{{{job}}})', 0),
            (f'sum(attention_queue_requests{{{job}}})', 0),
            (f'up{{{job}}}', 1),
            (f'count(attention_build_info{{{job}, backend="cpu", version!="", '
             f'git_commit!="", device_name!=""}})', 1),
            (f'attention_queue_limit_requests{{{job}}}', MAX_QUEUE_REQUESTS),
            (f'count(process_resident_memory_bytes{{{job}}} > 0)', 1),
            (f'count(process_cpu_seconds_total{{{job}}})', 1),
            (f'count(process_open_fds{{{job}}} > 0)', 1),
        ]
        deadline = time.monotonic() + args.timeout
        while True:
            got = [(q, want, scalar(prom_port, q)) for q, want in expected]
            wrong = [(q, want, value) for q, want, value in got if value != want]
            if not wrong or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for q, want, value in got:
            print(f"{'ok  ' if value == want else 'FAIL'} {q} = {value} (want {want})")
        if wrong:
            print(f"FAIL: Prometheus does not show what was sent, "
                  f"{time.time() - sent_at:.1f} s after the last call")
            return 1

        # The real server's exposition passes Prometheus's linter.
        promtool = shutil.which("promtool")
        if promtool:
            _, scrape = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            lint = subprocess.run([promtool, "check", "metrics"], input=scrape,
                                  capture_output=True, text=True)
            if lint.returncode != 0 or "attention_requests_total" not in scrape:
                print(f"FAIL: promtool check metrics on the server's scrape: "
                      f"{lint.stdout}{lint.stderr}")
                return 1
            print("ok   promtool check metrics on the server's /metrics")

        # The latency histogram yields a quantile within what a client waited.
        p99 = scalar(prom_port, f'histogram_quantile(0.99, sum by (le) '
                                f'(attention_request_duration_seconds_bucket{{{job}}}))')
        mean = scalar(prom_port, f'sum(attention_request_duration_seconds_sum{{{job}}}) / '
                                 f'sum(attention_request_duration_seconds_count{{{job}}})')
        print(f"server-side latency: mean {mean} s, p99 {p99} s")
        if p99 is None or mean is None or not (0 < mean <= p99 <= 60):
            print("FAIL: implausible latency quantiles")
            return 1
        ok = True
        print(f"PASS: Prometheus saw {UNARY + INVALID + STREAM} requests "
              f"{time.time() - sent_at:.1f} s after the last call")
        return 0
    finally:
        for p in reversed(processes):
            p.stop()
        if not ok:
            for p in processes:
                p.dump()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
