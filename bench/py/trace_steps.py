"""trace_steps.py TRACE NAME...: the median duration (ms) of the tasks of each NAME in a Chrome
trace written by `arraybridge screen --trace`, one "step_ms NAME V" line each, then
"chain_ms V", their sum, and "count NAME N" (how many tasks of that name)."""
import json
import statistics
import sys

doc = json.load(open(sys.argv[1]))
names = sys.argv[2:]
durs = {n: [] for n in names}
for e in doc["traceEvents"]:
    if e.get("ph") == "X" and e.get("cat") == "task" and e.get("name") in durs:
        durs[e["name"]].append(e["dur"] / 1000.0)
total = 0.0
for n in names:
    if not durs[n]:
        sys.exit(f"no {n} tasks in {sys.argv[1]}")
    m = statistics.median(durs[n])
    total += m
    print("step_ms", n, m)
    print("count", n, len(durs[n]))
print("chain_ms", total)
