"""trace_check.py TRACE NAME: parse a Chrome trace written by ab_trace_write and print counts.

Exits non-zero when the file is not valid JSON or lacks traceEvents. Prints, one per line:
  named N     "X" events called NAME on worker tracks (cat "task")
  stream N    the same on stream tracks (cat "stream")
  other N     "X" events on worker tracks with another name
  workers N   thread_name metadata for workers;  streams N  for streams
  counters N  "C" events;  bad N  events with a missing or negative ts/dur, or no pid/tid
  dropped N   otherData.events_dropped
  order a,b   the names of the worker-track "X" events, in file order
"""
import json
import sys

path, name = sys.argv[1], sys.argv[2]
with open(path) as f:
    doc = json.load(f)
ev = doc["traceEvents"]
x = [e for e in ev if e["ph"] == "X"]
meta = [e for e in ev if e["ph"] == "M" and e["name"] == "thread_name"]
bad = 0
for e in ev:
    if not isinstance(e.get("pid"), int) or not isinstance(e.get("tid"), int):
        bad += 1
    if e["ph"] in ("X", "C") and not e.get("ts", -1) >= 0:
        bad += 1
    if e["ph"] == "X" and not e.get("dur", -1) >= 0:
        bad += 1
print("named", sum(1 for e in x if e["name"] == name and e["cat"] == "task"))
print("stream", sum(1 for e in x if e["name"] == name and e["cat"] == "stream"))
print("other", sum(1 for e in x if e["name"] != name and e["cat"] == "task"))
print("workers", sum(1 for e in meta if e["args"]["name"].startswith("worker")))
print("streams", sum(1 for e in meta if e["args"]["name"].startswith("stream")))
print("counters", sum(1 for e in ev if e["ph"] == "C"))
print("bad", bad)
print("dropped", doc["otherData"]["events_dropped"])
print("order", ",".join(e["name"] for e in x if e["cat"] == "task"))
