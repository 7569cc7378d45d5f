"""Exclusive instruction counts per function from a callgrind profile, per call:

    python3 bench/callgrind_top.py target/callgrind.out CALLS [LINES]

(callgrind_annotate charges a profile dumped after `callgrind_control --zero` to the
thread entry point, so the self costs are summed here from the file itself.)"""

import collections
import re
import sys

path, calls = sys.argv[1], int(sys.argv[2])
lines = int(sys.argv[3]) if len(sys.argv) > 3 else 40
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
function = None
after_calls = False
for line in open(path):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        function = resolve("fn", line[3:])
    elif line.startswith("cfn="):
        resolve("fn", line[4:])
    elif line.startswith(("ob=", "cob=")):
        resolve("ob", line.split("=", 1)[1])
    elif line.startswith("calls="):
        # The next cost line is the callee's inclusive cost, not this function's own.
        after_calls = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        if after_calls:
            after_calls = False
            continue
        fields = line.split()
        if len(fields) >= 2 and function is not None:
            costs[function] += int(fields[1])

total = sum(costs.values())
print(f"{total:,} instructions, {total / calls:,.0f} per call")
for function, cost in costs.most_common(lines):
    print(f"{100 * cost / total:5.1f} % {cost / calls:8,.0f}  {function[:140]}")
