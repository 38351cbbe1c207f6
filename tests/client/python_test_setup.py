"""What every Python client test does first (tests/client/python_*_test.py and
tests/server/python_backward_test.py, each run by path from ctest): exits 77 (skip) when grpcio
or numpy is missing, generates the attention.v1 stubs into a temporary directory and puts them
and client/python on sys.path, so that `attention_client` imports. Import it before grpc, numpy
and attention_client; a test outside tests/client puts this directory on sys.path first.
"""
import argparse
import os
import sys
import tempfile

try:
    import grpc  # noqa: F401
    import numpy  # noqa: F401
except ImportError as missing:
    print(f"SKIP: {missing} (Debian: apt-get install python3-grpcio python3-numpy "
          "python3-protobuf)")
    sys.exit(77)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "client", "python"))
import generate_stubs  # noqa: E402

STUBS = tempfile.mkdtemp(prefix="attention_stubs_")
generate_stubs.generate(STUBS)
sys.path.insert(0, STUBS)


def parse_args(configure=None):
    """The test's --target=HOST:PORT (and what `configure(parser)` adds): (args, the arguments
    left for unittest)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    if configure is not None:
        configure(parser)
    return parser.parse_known_args()
