#!/usr/bin/env python3
"""CPU time of a process's threads, grouped by thread name, between two snapshots.

  thread_cpu.py snapshot PID > before.json     (again after the load: > after.json)
  thread_cpu.py diff before.json after.json    -> JSON {"total_cores": x, "threads": {name:
                                                  {"cores": y, "count": n}}}, busiest first

A thread's CPU time is utime + stime from /proc/PID/task/TID/stat; "cores" is CPU seconds per
wall second between the snapshots, so 1.0 is one core kept busy. The server names its own
threads (attn-stager, attn-completer, attn-finisher, attn-stage-pool, attn-done-pool,
attn-batcher); gRPC's keep theirs. Threads that ended between the snapshots are not counted.
"""
import json
import os
import sys
import time


def snapshot(pid):
    ticks = os.sysconf("SC_CLK_TCK")
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended while listed
        # comm is in parentheses and may hold spaces; the fields after it are space-separated.
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        threads[tid] = {"name": name, "cpu_s": cpu_s}
    return {"wall_s": time.monotonic(), "threads": threads}


def diff(before, after):
    wall = after["wall_s"] - before["wall_s"]
    by_name = {}
    for tid, t in after["threads"].items():
        start = before["threads"].get(tid, {"cpu_s": 0.0})["cpu_s"]
        entry = by_name.setdefault(t["name"], {"cores": 0.0, "count": 0})
        entry["cores"] += (t["cpu_s"] - start) / wall if wall > 0 else 0.0
        entry["count"] += 1
    ordered = dict(sorted(by_name.items(), key=lambda kv: -kv[1]["cores"]))
    for entry in ordered.values():
        entry["cores"] = round(entry["cores"], 3)
    return {"wall_s": round(wall, 3),
            "total_cores": round(sum(e["cores"] for e in ordered.values()), 3),
            "threads": ordered}


def main(argv):
    if len(argv) == 3 and argv[1] == "snapshot":
        json.dump(snapshot(int(argv[2])), sys.stdout)
    elif len(argv) == 4 and argv[1] == "diff":
        with open(argv[2]) as b, open(argv[3]) as a:
            json.dump(diff(json.load(b), json.load(a)), sys.stdout, indent=1)
        print()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
