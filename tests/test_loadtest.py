"""Load test and serving benchmark: the summary maths, the loopback guard, and one short real run.

The real run is python -m benchmarks.serving end to end on the tiny toy model (archive, TorchServe on free
loopback ports with a private temp dir, 2 locust users for 5 s, stop, report), so it needs no
TorchServe fixture of its own. Numbers are not asserted, only that everything was written and
every request succeeded.
"""
import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

from loadtest.summarize import summarize

COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
           "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
           "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def write_stats(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def test_summary_reads_the_aggregated_row(tmp_path):
    stats = tmp_path / "locust_stats.csv"
    write_stats(stats, [
        ["POST", "/predictions/m [json]", 60, 0, 40, 41.5, 10.2, 90.7, 120, 6.0, 0.0, 40, 45, 50, 55, 60, 70, 80, 85, 90, 90, 90],
        ["POST", "/predictions/m [text]", 40, 2, 42, 43.0, 11.0, 95.0, 120, 4.0, 0.2, 42, 45, 50, 55, 60, 75, 85, 90, 95, 95, 95],
        ["", "Aggregated", 100, 2, 41, 42.1, 10.2, 95.0, 120, 10.0, 0.2, 41, 45, 50, 55, 60, 72, 82, 88, 95, 95, 95],
    ])
    summary = summarize(stats, {"users": 4})
    assert summary["users"] == 4
    assert (summary["requests"], summary["failures"], summary["failure_ratio"]) == (100, 2, 0.02)
    assert (summary["requests_per_s"], summary["p50_ms"], summary["p95_ms"], summary["p99_ms"]) == (10.0, 41, 72, 88)
    assert set(summary["by_name"]) == {"/predictions/m [json]", "/predictions/m [text]"}


def test_summary_of_a_run_without_requests(tmp_path):
    stats = tmp_path / "locust_stats.csv"
    write_stats(stats, [["", "Aggregated", 0, 0, 0, 0.0, 0, 0, 0, 0.0, 0.0] + ["N/A"] * 11])
    summary = summarize(stats)
    assert summary["requests"] == 0 and summary["failure_ratio"] is None and summary["p99_ms"] is None


@pytest.mark.parametrize("host", ["http://example.com", "http://10.0.0.1:8080", "http://127.0.0.1.example.com",
                                  "ftp://127.0.0.1", "http://127.0.0.1:8080/predictions", "http://user@127.0.0.1"])
def test_run_sh_refuses_other_hosts(host, tmp_path):
    done = subprocess.run([str(ROOT / "loadtest/run.sh"), "--host", host, "--key-file", "", "--duration", "1s",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "refused" in done.stderr
    assert not (tmp_path / "out").exists()


def processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.serving
def test_serving_benchmark_end_to_end(tiny_ckpt, toy_data_dir, tmp_path):
    out, work = tmp_path / "bench", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TMPDIR": str(work)}
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "benchmarks.serving", str(tiny_ckpt), "--duration", "5s", "--levels", "2",
           "--inprocess-seconds", "1", "--data", str(toy_data_dir / "test.txt"), "--out", str(out), "--record", ""]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("served/in-process ratio ")

    summary = json.loads((out / "users-2" / "summary.json").read_text())
    assert summary["users"] == 2 and summary["requests"] > 0 and summary["failures"] == 0
    assert {name.rsplit(" ", 1)[1] for name in summary["by_name"]} == {"[text]", "[json]"}
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html"):
        assert (out / "users-2" / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["users"] for r in results["levels"]] == [2]
    assert results["ratio"]["value"] > 0
    for name in ("throughput_vs_users.png", "latency_vs_users.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "torchserve-logs" / "ts_log.log").is_file()
    # The trap stopped TorchServe and its worker; their temp folder (under TMPDIR) is gone.
    assert processes_mentioning(str(work)) == []
    assert list(work.iterdir()) == []


def test_the_load_test_accepts_out_of_scope_and_multi_label_answers_and_nothing_else():
    import json as _json
    from loadtest.answers import check_answer
    labels = ["GetWeather", "PlayMusic"]

    def check(answer):
        return check_answer(200, _json.dumps(answer).encode(), labels)
    assert check({"label": "PlayMusic", "score": 0.9}) is None
    assert check({"label": None, "score": 0.4, "out_of_scope": True}) is None
    assert check({"labels": [{"label": "GetWeather", "score": 0.9}], "top_k": []}) is None
    assert check({"labels": [], "top_k": []}) is None
    assert "not one of the model's" in check({"label": None, "score": 0.4, "out_of_scope": False})
    assert "not the model's" in check({"labels": [{"label": "Nope", "score": 0.9}]})
