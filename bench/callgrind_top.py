"""Exclusive instruction counts per function from a callgrind profile, per call:

    python3 bench/callgrind_top.py target/callgrind.out CALLS [LINES]
    python3 bench/callgrind_top.py target/callgrind.out CALLS --callers NAME [LINES]

(callgrind_annotate charges a profile dumped after `callgrind_control --zero` to the
thread entry point, so the self costs are summed here from the file itself.) With
`--callers NAME`, it lists instead who calls the functions whose name contains NAME
(`memcpy`, `malloc`), with the instructions spent below each call site, per call: where
a shared cost such as copying comes from."""

import collections
import re
import sys

path, calls = sys.argv[1], int(sys.argv[2])
rest = sys.argv[3:]
callee_filter = None
if rest[:1] == ["--callers"]:
    callee_filter, rest = rest[1], rest[2:]
lines = int(rest[0]) if rest else 40
names = {"fn": {}, "ob": {}}


def resolve(kind, text):
    """Callgrind compresses names: `(12) name` the first time, `(12)` after."""
    match = re.match(r"\((\d+)\)(?: (.*))?", text)
    if not match:
        return text
    if match.group(2) is not None:
        names[kind][match.group(1)] = match.group(2)
    return names[kind].get(match.group(1), text)


costs = collections.Counter()
edges = collections.Counter()
function = None
callee = None
after_calls = False
for line in open(path):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        function = resolve("fn", line[3:])
    elif line.startswith("cfn="):
        callee = resolve("fn", line[4:])
    elif line.startswith(("ob=", "cob=")):
        resolve("ob", line.split("=", 1)[1])
    elif line.startswith("calls="):
        # The next cost line is the callee's inclusive cost, not this function's own.
        after_calls = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        fields = line.split()
        if after_calls:
            after_calls = False
            if len(fields) >= 2 and callee_filter and callee_filter in (callee or ""):
                edges[(function, callee)] += int(fields[1])
            continue
        if len(fields) >= 2 and function is not None:
            costs[function] += int(fields[1])

total = sum(costs.values())
print(f"{total:,} instructions, {total / calls:,.0f} per call")
if callee_filter:
    for (caller, called), cost in edges.most_common(lines):
        print(f"{100 * cost / total:5.1f} % {cost / calls:8,.0f}  {caller[:90]}  ->  {called[:50]}")
else:
    for function, cost in costs.most_common(lines):
        print(f"{100 * cost / total:5.1f} % {cost / calls:8,.0f}  {function[:140]}")
