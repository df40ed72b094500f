"""The GPU measurement script rehearsed on this CPU (benchmarks/gpu/measure.py run --small): every stage runs,
with the tiny model and a few requests, so that device minutes go to measuring, not debugging. The GPU
archive serves here on CPU workers (TorchServe sees no GPU) and the half-precision path runs in bf16."""
import json

import pytest

from benchmarks.gpu.measure import main

pytestmark = pytest.mark.serving
KEYS = {"device", "ceiling_encoder_ex_s", "served_p50_ms_1user", "served_req_s_64users", "served_texts_s_64x64",
        "bulk_lines_s", "label_agreement"}


@pytest.fixture(scope="module")
def measured(tiny_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu-measure")
    assert main(["prepare", "--checkpoint", str(tiny_ckpt), "--carry", str(base / "carry")]) == 0
    rc = main(["run", "--checkpoint", str(base / "carry" / "ckpt16"), "--reference",
               str(base / "carry" / "reference.json"), "--out", str(base / "out"), "--work", str(base / "work"),
               "--small"])
    return rc, base


def test_prepare_carries_float16_weights_and_the_cpu_answers(measured, tiny_ckpt):
    from safetensors.torch import load_file
    _, base = measured
    weights = load_file(str(base / "carry" / "ckpt16" / "model.safetensors"))
    assert {str(v.dtype) for v in weights.values() if v.is_floating_point()} == {"torch.float16"}
    reference = json.loads((base / "carry" / "reference.json").read_text())
    assert len(reference["texts"]) == len(reference["probabilities"]) == 700


def test_every_stage_runs_and_the_summary_has_every_key(measured):
    rc, base = measured
    summary = json.loads((base / "out" / "summary.json").read_text())
    assert rc == 0 and summary["errors"] == {}, summary["errors"]
    assert KEYS <= set(summary) and all(summary[k] is not None for k in KEYS), summary
    assert summary["label_agreement"] >= 0.9 and summary["scale"] == "small"
    for key in KEYS - {"device", "label_agreement"}:
        assert summary[key] > 0, key


def test_the_gpu_archive_served_on_cpu_answers_and_refuses_bad_input(measured):
    _, base = measured
    record = json.loads((base / "out" / "measure.json").read_text())
    serving = record["serving"]
    assert serving["answer"]["status"] == 200 and serving["answer"]["body"]["label"]
    assert [b["status"] for b in serving["bad_inputs"]] == [400, 400, 400]
    assert all(b["body"]["error_type"] == "validation" for b in serving["bad_inputs"])
    assert serving["worker_log"] and all(" on cpu " in line for line in serving["worker_log"])
    assert all(run["failures"] == 0 for run in serving["load"] + [serving["many"]])
    assert record["bulk"]["written"] == record["bulk"]["lines"]
