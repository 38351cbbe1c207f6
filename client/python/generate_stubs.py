#!/usr/bin/env python3
"""Generates the Python modules of the attention.v1 contract for the attention_client package.

    python3 client/python/generate_stubs.py [--out DIR]

writes DIR/attention/v1/attention_pb2.py and attention_pb2_grpc.py (DIR defaults to
client/python, next to the attention_client package; put DIR on sys.path). It uses protoc with
grpc's Python plugin when both are installed (Debian: protobuf-compiler, protobuf-compiler-grpc),
else the grpc_tools package (python3 -m grpc_tools.protoc).
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto")
PROTO = "attention/v1/attention.proto"


def generate(out, proto_root=PROTO_ROOT):
    """Writes the stubs under `out`; raises RuntimeError when no generator is available."""
    os.makedirs(out, exist_ok=True)
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    common = [f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    if protoc and plugin:
        command = [protoc, f"--plugin=protoc-gen-grpc_python={plugin}"] + common
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    else:
        try:
            from grpc_tools import protoc as grpc_protoc
        except ImportError:
            raise RuntimeError("neither protoc with grpc_python_plugin nor grpc_tools is "
                               "installed (Debian: apt-get install protobuf-compiler "
                               "protobuf-compiler-grpc)") from None
        if grpc_protoc.main(["grpc_tools.protoc"] + common) != 0:
            raise RuntimeError("grpc_tools.protoc failed")
    for package in ("attention", "attention/v1"):
        open(os.path.join(out, package, "__init__.py"), "a").close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="output directory (default: %(default)s)")
    parser.add_argument("--proto_root", default=PROTO_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        generate(args.out, args.proto_root)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.join(args.out, os.path.dirname(PROTO))}/attention_pb2*.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
