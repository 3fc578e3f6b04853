"""Compares Oxflow's and Flink's results of one query as multisets of rows.

    python compare.py OXFLOW_DIR FLINK_JSON_LINES

Timestamps are compared as milliseconds since the epoch (Oxflow writes RFC 3339, Flink's
collected rows print Python datetimes); numbers as numbers. Exits 1 on any difference.
"""
import collections
import datetime
import glob
import json
import sys


def millis(text):
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            t = datetime.datetime.strptime(text.replace("+00:00", ""), fmt)
            return round(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
        except ValueError:
            pass
    return text


def row(obj):
    return tuple(sorted((k, millis(v) if isinstance(v, str) else v) for k, v in obj.items()))


def load(lines):
    return collections.Counter(row(json.loads(l)) for l in lines if l.startswith("{") and '"records_per_sec"' not in l)


def main():
    ours = load(l for f in sorted(glob.glob(f"{sys.argv[1]}/part-*")) for l in open(f))
    theirs = load(open(sys.argv[2]))
    if ours == theirs:
        print(f"equal: {sum(ours.values())} rows")
        return
    print(f"DIFFERENT: oxflow {sum(ours.values())} rows, flink {sum(theirs.values())} rows")
    for r in list((ours - theirs).elements())[:3]:
        print("  only oxflow:", r)
    for r in list((theirs - ours).elements())[:3]:
        print("  only flink: ", r)
    sys.exit(1)


if __name__ == "__main__":
    main()
