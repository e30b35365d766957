#!/usr/bin/env python3
"""Compare ``pymicro`` cases between the Python package of a git revision and of the work tree.

Each measurement runs in a fresh process pinned to one CPU (malloc warmed first, best of 3 loops),
and the two trees alternate in every round, so that the host's drift touches both alike. Prints
µs per operation for each round and the best; asyncio is measured once per round for scale.

    python benches/pymicro_ab.py --base HEAD~1 sock_recv_small udp_pingpong --rounds 3

Both trees run on the same library (``RINGLOOP_LIBRARY``, by default this checkout's release
build): the comparison is of the Python packages.

(``pymicro`` puts this checkout's ``python-binding/src`` first on ``sys.path``; the child process
here puts the tree being measured before it and checks which ``ringloop`` it imported.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import os, sys
sys.path.insert(0, os.environ["AB_BENCHES"])
import pymicro
sys.path.insert(0, os.environ["AB_SRC"])
import ringloop
assert ringloop.__file__.startswith(os.environ["AB_SRC"]), ringloop.__file__
warm = bytearray(1 << 20)
del warm
bench = dict((name, (fn, n)) for name, fn, n in pymicro.BENCHES)[sys.argv[1]]
fn, n = bench[0], int(sys.argv[2]) if int(sys.argv[2]) else bench[1]
best = float("inf")
for _ in range(3):
    loop = pymicro.make_loop(sys.argv[3])
    try:
        best = min(best, fn(loop, n))
    finally:
        loop.close()
print(best / n * 1e6)
"""


def measure(src: Path, bench: str, n: int, loop: str, cpu: int) -> float:
    env = dict(os.environ, AB_SRC=str(src), AB_BENCHES=str(HERE))
    # Both trees run on one library: this compares the Python packages.
    env.setdefault("RINGLOOP_LIBRARY", str(ROOT / "target" / "release" / "libringloop.so"))
    command = [sys.executable, "-c", CHILD, bench, str(n), loop]
    if cpu >= 0:
        command = ["taskset", "-c", str(cpu)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{bench} on {loop} ({src}) failed:\n{done.stderr}")
    return float(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="+", help="pymicro case names (see pymicro.BENCHES)")
    parser.add_argument("--base", default="HEAD", help="git revision to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=0, help="operations per run (default: pymicro's)")
    parser.add_argument("--loops", default="ringloop-io_uring,ringloop-epoll")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: none)")
    args = parser.parse_args()
    loops = args.loops.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base, "python-binding/src"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"base": Path(tmp) / "python-binding" / "src", "work": ROOT / "python-binding" / "src"}
        for bench in args.benches:
            results: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                results.setdefault("asyncio", []).append(
                    measure(trees["work"], bench, args.n, "asyncio", args.cpu)
                )
                for name, src in trees.items():
                    for loop in loops:
                        results.setdefault(f"{loop} {name}", []).append(
                            measure(src, bench, args.n, loop, args.cpu)
                        )
            for key, values in results.items():
                rounds = " ".join(f"{v:8.3f}" for v in values)
                print(f"{bench:22s} {key:24s} {rounds}   best {min(values):.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
