"""The Nexmark queries Oxflow runs, in Flink SQL on Flink's local mini-cluster (PyFlink).

Reads the same events Oxflow reads: either bids alone (JSON lines with q0's columns: a file
sink's directory of `part-*.jsonl`, written by `oxflow nexmark --query q0 --sink file:DIR`),
or every table (a directory written by `oxflow nexmark-tables --out DIR`, with `person/`,
`auction/` and `bid/`), with the same watermark (4 s of bounded out-of-orderness on
date_time) and the same parallelism.

    python nexmark.py --input DIR --query q5 --parallelism 2 [--collect]

With --print-sql it prints, instead of running anything, the statements it would run (the
tables' DDL and the query, separated by `;`): `oxflow sql -e` runs the very same text
(scripts/compare-flink-sql.sh).

Prints one JSON line: query, records, seconds (execution only, after the job is planned),
records_per_sec, and the CPU seconds and peak RSS of the JVM Flink ran in. With --collect the results are printed too, as JSON lines (for comparing
with Oxflow's on small input); otherwise they go to a blackhole sink.
"""
import argparse
import json
import os
import sys
import time

from pyflink.java_gateway import get_gateway

from pyflink.table import EnvironmentSettings, Schema, TableDescriptor, TableEnvironment

QUERIES = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    # Nexmark's own q5: hop-window counts, joined with the per-window maximum (every tie).
    "q5": """
        SELECT AuctionBids.starttime AS window_start, AuctionBids.endtime AS window_end,
               AuctionBids.auction, AuctionBids.num
        FROM (
          SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime
          FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
          GROUP BY auction, window_start, window_end
        ) AS AuctionBids
        JOIN (
          SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
          FROM (
            SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
            GROUP BY auction, window_start, window_end
          ) AS CountBids
          GROUP BY CountBids.starttime, CountBids.endtime
        ) AS MaxBids
        ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
           AND AuctionBids.num >= MaxBids.maxn
    """,
    # Nexmark's own q7: the tumbling-window maximum, joined back to the bids.
    "q7": """
        SELECT B1.window_start, B1.window_end, B.auction, B.bidder, B.price, B.date_time
        FROM bid B
        JOIN (
          SELECT MAX(price) AS maxprice, window_start, window_end
          FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY window_start, window_end
        ) B1
        ON B.price = B1.maxprice
        WHERE B.date_time >= B1.window_start AND B.date_time < B1.window_end
    """,
    # Nexmark's own q3: an unbounded (regular) join.
    "q3": """
        SELECT P.name, P.city, P.state, A.id
        FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
        WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')
    """,
    # Nexmark's own q4: a join, the winning bid per auction, the average per category. Flink
    # emits it as an updating result (retractions); Oxflow as one row per closed auction.
    "q4": """
        SELECT Q.category, AVG(CAST(Q.final AS DOUBLE)) AS avg_final
        FROM (
          SELECT MAX(B.price) AS final, A.category
          FROM auction A, bid B
          WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
          GROUP BY A.id, A.category
        ) Q
        GROUP BY Q.category
    """,
    # Nexmark's own q8: people and sellers of the same tumbling window (a window join).
    "q8": """
        SELECT P.id, P.name, P.starttime AS window_start
        FROM (
          SELECT id, name, window_start AS starttime, window_end AS endtime
          FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY id, name, window_start, window_end
        ) P
        JOIN (
          SELECT seller, window_start AS starttime, window_end AS endtime
          FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY seller, window_start, window_end
        ) A
        ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime
    """,
    "q11": """
        SELECT bidder, COUNT(*) AS bid_count,
               SESSION_START(date_time, INTERVAL '10' SECOND) AS window_start,
               SESSION_END(date_time, INTERVAL '10' SECOND) AS window_end
        FROM bid
        GROUP BY bidder, SESSION(date_time, INTERVAL '10' SECOND)
    """,
}


def collect(env, query, out):
    """Runs `query` to its end and writes its rows to `out` as JSON lines."""
    # Timestamps as text: PyFlink cannot turn every timestamp column into a Python value.
    schema = env.sql_query(query).get_schema()
    columns = ", ".join(
        f"CAST(`{n}` AS STRING) AS `{n}`" if "TIMESTAMP" in str(t).upper() else f"`{n}`"
        for n, t in zip(schema.get_field_names(), schema.get_field_data_types())
    )
    result = env.execute_sql(f"SELECT {columns} FROM ({query})")
    names = result.get_table_schema().get_field_names()
    with result.collect() as rows:
        for row in rows:
            out.write(json.dumps({n: str(v) if not isinstance(v, (int, float)) else v
                                  for n, v in zip(names, row)}) + "\n")


def ddl(input_dir):
    """The CREATE TABLE statements of the tables under input_dir: every table of a directory
    written by `oxflow nexmark-tables`, else bids alone."""
    tables = os.path.isdir(os.path.join(input_dir, "bid"))
    columns = {
        "bid": "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP_LTZ(3), extra STRING",
        "person": "id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, "
                  "state STRING, date_time TIMESTAMP_LTZ(3), extra STRING",
        "auction": "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, "
                   "reserve BIGINT, date_time TIMESTAMP_LTZ(3), expires TIMESTAMP_LTZ(3), "
                   "seller BIGINT, category BIGINT, extra STRING",
    }
    statements = []
    for name in (columns if tables else ["bid"]):
        path = os.path.join(input_dir, name) if tables else input_dir
        statements.append(f"""CREATE TABLE {name} (
              {columns[name]},
              WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
            ) WITH (
              'connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json',
              'json.timestamp-format.standard' = 'ISO-8601', 'source.path.regex-pattern' = '.*/part-[^/]*'
            )""")
    return statements


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--query", required=True,
                   help=f"one of {sorted(QUERIES)}; with --collect-dir, several, comma-separated")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--records", type=int, default=0, help="records in the input, for the rate")
    p.add_argument("--collect", action="store_true")
    p.add_argument("--print-sql", action="store_true")
    p.add_argument("--collect-dir", help="collect each query's rows into DIR/<query>.flink")
    args = p.parse_args()
    unknown = [q for q in args.query.split(",") if q not in QUERIES]
    if unknown or ("," in args.query and not args.collect_dir):
        p.error(f"--query: {args.query} (queries: {sorted(QUERIES)}; several only with --collect-dir)")
    if args.print_sql:
        print(";\n".join(ddl(args.input) + [QUERIES[args.query].strip()]) + ";")
        return

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("table.local-time-zone", "UTC")
    # Files are read once (a bounded source): the job ends at the end of input, which fires
    # every window, as Oxflow's bounded runs do.
    for statement in ddl(args.input):
        env.execute_sql(statement)
    query = QUERIES.get(args.query)
    table = env.sql_query(query) if query else None
    if args.collect_dir:
        # Every query in this one JVM (its start-up is most of a small run's time).
        for name in args.query.split(","):
            with open(os.path.join(args.collect_dir, f"{name}.flink"), "w") as out:
                collect(env, QUERIES[name], out)
        return
    if args.collect:
        start = time.time()
        collect(env, query, sys.stdout)
        seconds = time.time() - start
    else:
        sink_schema = Schema.new_builder().from_row_data_type(
            table.get_schema().to_row_data_type()).build()
        env.create_temporary_table(
            "sink", TableDescriptor.for_connector("blackhole").schema(sink_schema).build())
        start = time.time()
        table.execute_insert("sink").wait()
        seconds = time.time() - start
    # Flink runs in the JVM PyFlink started, not in this process: read that process's CPU
    # time and peak resident memory from /proc.
    pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu_ns = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") * 1e9
    peak_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak_kb = int(line.split()[1])
    print(json.dumps({
        "query": args.query,
        "records": args.records,
        "seconds": seconds,
        "records_per_sec": args.records / seconds if seconds > 0 else None,
        "jvm_cpu_seconds": cpu_ns / 1e9,
        "jvm_peak_rss_mb": peak_kb / 1024,
    }))


if __name__ == "__main__":
    main()
