"""Which crates' code and data are resident in a running process, from the pages the
kernel has mapped in (/proc/PID/pagemap, needs root) and the binary's symbols (nm).

    python3 bench/resident.py PID [BINARY]

Prints KiB resident per crate, counting each symbol's bytes that lie on a resident page
of the binary's mappings, and the total resident KiB of those mappings. A symbol's crate
is the first path segment of its demangled name (the type's, for `<T as Trait>::f`);
aws-lc's C functions are counted as aws-lc, other symbols without a path as `(C, std
or no path)`. Pages with no symbol on them (headers, relocations, string tables) are
counted as `(no symbol)`."""

import collections
import os
import re
import struct
import subprocess
import sys

pid = int(sys.argv[1])
binary = sys.argv[2] if len(sys.argv) > 2 else os.readlink(f"/proc/{pid}/exe")
page = os.sysconf("SC_PAGE_SIZE")

mappings = []
for line in open(f"/proc/{pid}/maps"):
    fields = line.split()
    if len(fields) >= 6 and os.path.realpath(fields[5]) == os.path.realpath(binary):
        start, end = (int(x, 16) for x in fields[0].split("-"))
        mappings.append((start, end, int(fields[2], 16)))
if not mappings:
    sys.exit(f"bench/resident.py: {binary} is not mapped in process {pid}")
base = min(start - offset for start, _, offset in mappings)

resident = set()
with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
    for start, end, _ in mappings:
        pagemap.seek(start // page * 8)
        entries = pagemap.read((end - start) // page * 8)
        for i in range((end - start) // page):
            (entry,) = struct.unpack_from("<Q", entries, i * 8)
            if entry >> 63 & 1:
                resident.add(start + i * page)

segment = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def crate(name):
    if name.startswith("aws_lc_") or name.startswith("_aesni") or "aws_lc" in name[:20]:
        return "aws-lc"
    found = segment.search(name.lstrip("<&*").replace("dyn ", "").replace("impl ", ""))
    if not found:
        return "(C, std or no path)"
    first = found.group(1)
    return {"core": "std", "alloc": "std", "std": "std"}.get(first, first)


by_crate = collections.Counter()
covered = collections.Counter()
nm = subprocess.run(["nm", "--print-size", "--defined-only", "-C", binary], capture_output=True, text=True, check=True)
sized = re.compile(r"^([0-9a-f]+) ([0-9a-f]+) \w (.*)$")
for line in nm.stdout.splitlines():
    found = sized.match(line)
    if not found:
        continue
    address, size, name = int(found.group(1), 16), int(found.group(2), 16), found.group(3)
    start, end = base + address, base + address + size
    counted = 0
    p = start // page * page
    while p < end:
        if p in resident:
            counted += min(end, p + page) - max(start, p)
            covered[p] += min(end, p + page) - max(start, p)
        p += page
    if counted:
        by_crate[crate(name)] += counted

total = len(resident) * page
by_crate["(no symbol)"] = max(0, total - sum(min(v, page) for v in covered.values()))
print(f"resident pages of {binary}: {total / 1024:,.0f} KiB")
for name, size in by_crate.most_common():
    print(f"{size / 1024:9,.0f} KiB  {name}")
