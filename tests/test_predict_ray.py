"""python -m train.predict_ray on a local Ray instance (2 CPUs, no dashboard; ~10 s to start): the labels of
Ray Data's actors equal the one-process bulk path's, line by line; a bad record exits 2 with file:line."""
import contextlib
import json
import random
import signal

import pytest

from conftest import KEYWORDS, PROBE_TEXTS, toy_sentence
from train import predict as predict_cli

ray = pytest.importorskip("ray")
from train import predict_ray  # after importorskip: needs ray


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging: a TimeoutError in the main thread after `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def local_ray(request):
    request.addfinalizer(ray.shutdown)   # also after a start that failed half-way
    with deadline(180):
        ray.init(num_cpus=2, include_dashboard=False)
    return ray


def read_folder(folder):
    records = [json.loads(line) for path in sorted(folder.glob("*.json"))
               for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(records, key=lambda r: r["line"])


def test_ray_labels_equal_the_bulk_path_line_by_line(local_ray, tiny_ckpt, tmp_path):
    rng = random.Random(3)
    lines = [toy_sentence(rng, rng.choice(sorted(KEYWORDS))) for _ in range(300)] + [p.strip() for p in PROBE_TEXTS]
    for i in (0, 17, 150):
        lines[i] = ""
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert predict_cli.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output",
                             str(tmp_path / "bulk.jsonl"), "--threads", "1"]) == 0
    expected = [json.loads(line) for line in (tmp_path / "bulk.jsonl").read_text(encoding="utf-8").splitlines()]
    with deadline(300):
        rc = predict_ray.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output",
                               str(tmp_path / "ray"), "--actors", "2", "--chunk", "50"])
    assert rc == 0 and ray.is_initialized()   # a Ray started by the caller is left running
    got = read_folder(tmp_path / "ray")
    assert [r["line"] for r in got] == [r["line"] for r in expected] and len(got) == 303
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_ray_bad_record_exits_2_with_file_and_line(local_ray, tiny_ckpt, tmp_path, capfd):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "rain"}\n\n{"text": 7}\n', encoding="utf-8")
    with deadline(300):
        rc = predict_ray.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output",
                               str(tmp_path / "ray"), "--actors", "1"])
    assert rc == 2
    assert f"error: {src}:3: 'text' is not a string but int" in capfd.readouterr().err


def test_ray_refuses_a_used_output_folder_before_starting(tiny_ckpt, tmp_path, capfd):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.json").write_text("{}\n")
    src = tmp_path / "in.txt"
    src.write_text("rain\n")
    assert predict_ray.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output",
                             str(tmp_path / "out")]) == 2
    assert "is not an empty folder" in capfd.readouterr().err
