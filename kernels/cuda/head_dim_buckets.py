"""The CUDA kernels' head-dim buckets, read from head_dim_buckets.txt (the one list CMake, the
instantiation generators and the host dispatch share)."""
import pathlib

_FILE = pathlib.Path(__file__).resolve().parent / "head_dim_buckets.txt"


def head_dim_buckets():
    """The buckets, ascending, as ints."""
    values = []
    for line in _FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        values.extend(int(v) for v in line.split())
    if values != sorted(set(values)) or not values:
        raise SystemExit(f"{_FILE}: the buckets must be ascending and distinct, got {values}")
    return values
