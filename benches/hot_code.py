#!/usr/bin/env python3
"""The code a raw get runs: its size in cache lines, and how much of those lines is cold.

    RAW_BENCH_ONLY=get:256 valgrind --tool=callgrind --dump-instr=yes \
        --callgrind-out-file=cg.out target/release/raw_bench --seconds 6
    benches/hot_code.py cg.out OPS target/release/raw_bench [--functions N]

OPS is the number of gets of the run (ops/s times seconds, from raw_bench's row). An
instruction is hot when it ran at least half as many times as there were gets; a hot line is
a 64-byte line holding one. Prints the hot lines (the instruction footprint of a get, to hold
against the 32 KiB L1 instruction cache), the hot and cold bytes inside them, and the functions
with the most hot lines. See docs/PERFORMANCE.md, session 12.
"""
import collections
import re
import subprocess
import sys


def read_costs(path):
    """Instruction address -> (count, object, function) from a callgrind --dump-instr file."""
    names = {}

    def name(kind, text):
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not m:
            return text
        key = (kind, m.group(1))
        if m.group(2):
            names[key] = m.group(2)
        return names.get(key, text)

    costs = collections.Counter()
    where = {}
    obj = fn = None
    addr = 0
    after_calls = False
    for line in open(path):
        line = line.rstrip("\n")
        if not line or line[0] == "#":
            continue
        if line.startswith("ob="):
            obj = name("ob", line[3:])
        elif line.startswith("fn="):
            fn = name("fn", line[3:])
        elif line.startswith("cfn="):
            name("fn", line[4:])
        elif line.startswith("cob="):
            name("ob", line[4:])
        elif line.startswith("calls="):
            after_calls = True
        elif line[0] in "0123456789+-*":
            parts = line.split()
            a = parts[0]
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] == "+":
                addr += int(a[1:])
            elif a[0] == "-":
                addr -= int(a[1:])
            if after_calls:
                # The cost line of a call: the callee's inclusive cost, not this instruction's.
                after_calls = False
                continue
            if len(parts) >= 3:
                costs[addr] += int(parts[2])
                where[addr] = (obj, fn)
    return costs, where


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    path, ops, binary = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    top = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--functions" else 25
    costs, where = read_costs(path)
    own = {a: c for a, c in costs.items() if where[a][0] and where[a][0].endswith(binary.split("/")[-1])}
    hot = {a for a, c in own.items() if c >= 0.5 * ops}
    lines = {a // 64 for a in hot}
    disasm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True).stdout
    starts = sorted(int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+\S", disasm, re.M))
    hot_bytes = cold_bytes = 0
    for a, b in zip(starts, starts[1:]):
        if a // 64 in lines and 0 < b - a <= 15:
            if own.get(a, 0) >= 0.05 * ops:
                hot_bytes += b - a
            else:
                cold_bytes += b - a
    print(f"hot instructions {len(hot)}, hot lines {len(lines)} = {len(lines) * 64 / 1024:.1f} KiB "
          f"(hot bytes {hot_bytes / 1024:.1f} KiB, cold bytes inside {cold_bytes / 1024:.1f} KiB)")
    per_fn = collections.defaultdict(set)
    for a in hot:
        per_fn[where[a][1]].add(a // 64)
    for fn, ls in sorted(per_fn.items(), key=lambda x: -len(x[1]))[:top]:
        print(f"{len(ls):5d} lines  {fn[:120]}")


if __name__ == "__main__":
    main()
