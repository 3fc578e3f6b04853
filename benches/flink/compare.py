"""Compares Oxflow's and Flink's results of one query as multisets of rows.

    python compare.py OXFLOW_OUTPUT FLINK_JSON_LINES
    python compare.py --changelog KEY VALUE OXFLOW_DIR FLINK_JSON_LINES

OXFLOW_OUTPUT is a file sink's directory (its part-* files) or a file of JSON lines (what
`oxflow sql` prints for a query alone).

The second form is for a query whose result both systems emit as a changelog per KEY (q4):
Flink's final VALUE of each key (its last row for that key) must be among Oxflow's rows of
that key (to a relative 1e-9: the two sum in different orders), and the keys the same.

Timestamps are compared as milliseconds since the epoch (Oxflow writes RFC 3339, Flink's
collected rows print Python datetimes); numbers as numbers to 12 significant digits, also
where Flink prints a DECIMAL as text (Oxflow computes `0.908 * price` in DOUBLE). Exits 1 on
any difference.
"""
import collections
import datetime
import glob
import json
import os
import re
import sys


def millis(text):
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            t = datetime.datetime.strptime(text.replace("+00:00", ""), fmt)
            return round(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
        except ValueError:
            pass
    return text


def value(v):
    if isinstance(v, str):
        t = millis(v)
        if t != v:
            return t
        # A DECIMAL printed as text; not any word float() takes (`nan`, `inf`).
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", v):
            return v
        v = float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(f"{v:.12g}")
    return v


def row(obj):
    return tuple(sorted((k, value(v)) for k, v in obj.items() if v is not None and v != "None"))


def load(lines):
    return collections.Counter(row(json.loads(l)) for l in lines if l.startswith("{") and '"records_per_sec"' not in l)


def changelog(key, value, ours_dir, theirs_file):
    ours = collections.defaultdict(list)
    for f in sorted(glob.glob(f"{ours_dir}/part-*")):
        for line in open(f):
            r = json.loads(line)
            ours[r[key]].append(float(r[value]))
    final = {}
    for line in open(theirs_file):
        if line.startswith("{") and '"records_per_sec"' not in line:
            r = json.loads(line)
            final[r[key]] = float(r[value])
    if set(final) != set(ours):
        print(f"DIFFERENT keys: oxflow {sorted(ours)}, flink {sorted(final)}")
        sys.exit(1)
    for k, v in sorted(final.items()):
        if not any(abs(o - v) <= 1e-9 * abs(v) for o in ours[k]):
            print(f"DIFFERENT: flink's final {value} of {key}={k} is {v}, not among oxflow's {len(ours[k])} rows")
            sys.exit(1)
    print(f"equal: final {value} of {len(final)} keys ({sum(map(len, ours.values()))} oxflow changelog rows)")


def main():
    if sys.argv[1] == "--changelog":
        return changelog(*sys.argv[2:6])
    if os.path.isdir(sys.argv[1]):
        ours = load(l for f in sorted(glob.glob(f"{sys.argv[1]}/part-*")) for l in open(f))
    else:
        ours = load(open(sys.argv[1]))
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
