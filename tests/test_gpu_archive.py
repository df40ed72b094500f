"""GPU workers on a CPU machine: `./archive.sh --gpu` packs the GPU model-config (the CPU one with the GPU keys
laid over it), the handler takes the device TorchServe assigns and falls back to CPU saying why, and fp16/bf16
weights (the CUDA default) give the labels of fp32. The device itself is measured by benchmarks/gpu/."""
import logging
import subprocess
import zipfile

import numpy as np
import pytest
import yaml

from conftest import PROBE_TEXTS, ROOT
from serving.torchserve import read_properties
from test_handler import FakeContext, handle, load_handler_module, settings, JSON
from textclf.errors import CheckpointError
from textclf.predict import Predictor


def archive(ckpt, name, store, *flags):
    return subprocess.run([str(ROOT / "archive.sh"), *flags, str(ckpt), name], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "MODEL_STORE": str(store)}, timeout=300)


def packed_config(mar):
    with zipfile.ZipFile(mar) as z:
        return yaml.safe_load(z.read("model-config.yaml"))


@pytest.fixture(scope="module")
def archives(tiny_ckpt, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    for name, flags in (("toy-cpu", ()), ("toy-gpu", ("--gpu",))):
        done = archive(tiny_ckpt, name, store, *flags)
        assert done.returncode == 0, done.stderr
    return {name: packed_config(store / f"{name}.mar") for name in ("toy-cpu", "toy-gpu")}


def test_the_gpu_archive_asks_for_gpu_workers_and_keeps_every_other_setting(archives):
    cpu = yaml.safe_load((ROOT / "handlers/model-config.yaml").read_text())
    gpu_keys = yaml.safe_load((ROOT / "handlers/model-config-gpu.yaml").read_text())
    assert archives["toy-cpu"] == cpu and cpu["deviceType"] == "cpu"
    packed = archives["toy-gpu"]
    assert packed["deviceType"] == "gpu" and packed["handler"]["cuda_precision"] == "fp16"
    for key, value in cpu.items():
        if key != "handler":
            assert packed[key] == gpu_keys.get(key, value), key
    for key, value in cpu["handler"].items():
        assert packed["handler"][key] == gpu_keys["handler"].get(key, value), key


def test_a_batch_of_answers_fits_one_message_on_cpu_and_gpu(archives):
    limit = int(read_properties(ROOT / "config.properties")["max_response_size"])
    for name, config in archives.items():
        assert config["batchSize"] * config["handler"]["max_answer_bytes"] < limit, name


def test_archive_refuses_an_unknown_option(tiny_ckpt, tmp_path):
    done = archive(tiny_ckpt, "x", tmp_path, "--cuda")
    assert done.returncode == 2 and "unknown option '--cuda'" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("gpu_id, device_type, words", [
    (0, "gpu", "TorchServe gave this worker GPU 0, but CUDA is not available"),
    (None, "gpu", "asks for GPU workers (deviceType: gpu), but TorchServe sees no GPU"),
])
def test_the_handler_falls_back_to_cpu_and_says_why(tiny_ckpt, caplog, gpu_id, device_type, words):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback is not taken")
    context = FakeContext(tiny_ckpt, {**settings(cuda_precision="fp16"), "deviceType": device_type})
    context.system_properties["gpu_id"] = gpu_id
    handler = load_handler_module().TextClassifierHandler()
    with caplog.at_level(logging.WARNING):
        handler.initialize(context)
    assert words in caplog.text
    assert handler.predictor.device.type == "cpu" and handler.predictor.precision == "fp32"
    [answer] = handle(handler, context, [({"body": {"text": "play some jazz"}}, {"body": JSON})])
    assert answer["label"] == Predictor.from_checkpoint(tiny_ckpt).predict(["play some jazz"])[0]["label"]


def test_the_handler_never_picks_a_gpu_it_was_not_given(tiny_ckpt):
    device = load_handler_module().TextClassifierHandler._device
    assert device(None, "cpu") == "cpu" and device(None, None) == "cpu"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_weights_give_the_labels_of_fp32(tiny_ckpt, precision):
    fp32 = Predictor.from_checkpoint(tiny_ckpt)
    half = Predictor.from_checkpoint(tiny_ckpt).cast(precision)
    assert half.precision == precision and next(half.model.parameters()).dtype != next(fp32.model.parameters()).dtype
    want, got = fp32.predict_proba(PROBE_TEXTS), half.predict_proba(PROBE_TEXTS)
    assert got.dtype == np.float32 and np.allclose(got.sum(1), 1, atol=1e-5)   # softmax in float32
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 2e-2


def test_cuda_precision_applies_only_on_cuda_and_names_bad_values(tiny_ckpt):
    assert Predictor.from_checkpoint(tiny_ckpt, "cpu", cuda_precision="fp16").precision == "fp32"
    with pytest.raises(CheckpointError, match="unknown precision 'fp8'"):
        Predictor.from_checkpoint(tiny_ckpt).cast("fp8")
