"""Turn locust's PREFIX_stats.csv into summary.json: the "Aggregated" row plus one row per request name.

Usage: python loadtest/summarize.py STATS_CSV SUMMARY_JSON [--meta KEY=VALUE ...]
The --meta pairs (users, duration, host, ...) are copied into the summary; those named in NUMERIC
as numbers.
Locust reports response-time percentiles rounded to 2 significant digits above 100 ms.
Exit code 0 when at least one request was made, 1 when none was (the server never answered).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

NUMERIC = ("users", "spawn_rate", "duration_s", "locust_exit_code")


def _number(value):
    if value in (None, "", "N/A"):
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else number


def row_summary(row):
    requests, failures = int(row["Request Count"]), int(row["Failure Count"])
    return {
        "requests": requests,
        "failures": failures,
        "failure_ratio": round(failures / requests, 6) if requests else None,
        "requests_per_s": round(float(row["Requests/s"]), 3),
        "failures_per_s": round(float(row["Failures/s"]), 3),
        "avg_ms": round(float(row["Average Response Time"]), 2) if requests else None,
        "min_ms": round(float(row["Min Response Time"]), 2) if requests else None,
        "p50_ms": _number(row["50%"]),
        "p95_ms": _number(row["95%"]),
        "p99_ms": _number(row["99%"]),
        "max_ms": round(float(row["Max Response Time"]), 2) if requests else None,
    }


def summarize(stats_csv, meta=None):
    with open(stats_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    total = [r for r in rows if r["Name"] == "Aggregated"]
    if len(total) != 1:
        raise ValueError(f"{stats_csv}: expected one 'Aggregated' row, found {len(total)}")
    summary = dict(meta or {})
    summary.update(row_summary(total[0]))
    summary["by_name"] = {r["Name"]: row_summary(r) for r in rows if r["Name"] != "Aggregated"}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stats_csv", type=Path)
    parser.add_argument("summary_json", type=Path)
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    meta = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--meta {pair!r}: expected KEY=VALUE")
        meta[key] = _number(value) if key in NUMERIC else value
    try:
        summary = summarize(args.stats_csv, meta)
    except (OSError, ValueError, KeyError) as e:
        print(f"summarize: {e}", file=sys.stderr)
        return 2
    args.summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    ratio = "n/a" if summary["failure_ratio"] is None else f"{summary['failure_ratio']:.2%}"
    print(f"{summary['requests']} requests, {summary['requests_per_s']:.1f} req/s, "
          f"p50/p95/p99 {summary['p50_ms']}/{summary['p95_ms']}/{summary['p99_ms']} ms, "
          f"{summary['failures']} failures ({ratio})")
    return 0 if summary["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
