"""The KServe storage layout (python -m serving.kserve) served by a real TorchServe started the way KServe's
TorchServe runtime starts it (`torchserve --start --model-store=MOUNT/model-store --ts-config=MOUNT/config/
config.properties`, no --models: the model comes from model_snapshot), answering what KServe's wrapper forwards:
v1 and v2 requests, without a key, on loopback only."""
import json
import subprocess
import time

import pytest
import requests

from serving.kserve import layout
from serving.torchserve import free_ports, log_tail, read_properties, server_env, stop_torchserve
from textclf.predict import Predictor

pytestmark = pytest.mark.serving
NAME = "toy"


@pytest.fixture(scope="module")
def served(tiny_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("kserve")
    mount, tmp, cwd = base / "mnt" / "models", base / "tmp", base / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    ports = free_ports(4)
    layout(tiny_ckpt, NAME, mount, mount=str(mount), ports=(ports[0], ports[0], *ports[1:]))
    config = read_properties(mount / "config" / "config.properties")
    env = server_env(tmp) | {"OMP_NUM_THREADS": "1", "TS_SERVICE_ENVELOPE": "kserve"}   # what the runtime sets
    with open(base / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            ["torchserve", "--start", f"--model-store={mount}/model-store",
             f"--ts-config={mount}/config/config.properties"],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = config["inference_address"]
    try:
        deadline, ready = time.monotonic() + 180, False
        while time.monotonic() < deadline and not ready:
            try:
                ready = requests.post(f"{url}/v1/models/{NAME}:predict", json={"instances": ["rain"]},
                                      timeout=10).status_code == 200
            except requests.RequestException:
                pass
            time.sleep(1)
        if not ready:
            pytest.fail(f"the KServe layout did not serve {NAME} within 180 s\n{log_tail(cwd)}")
        yield url, config, mount
    finally:
        stop_torchserve(launcher, env, cwd)


def test_the_layout_is_what_the_runtime_expects(served):
    _, config, mount = served
    assert (mount / "model-store" / f"{NAME}.mar").is_file()
    snapshot = json.loads(config["model_snapshot"])
    assert list(snapshot["models"]) == [NAME] and snapshot["models"][NAME]["1.0"]["marName"] == f"{NAME}.mar"
    assert config["inference_address"].startswith("http://127.0.0.1:")
    assert config["disable_token_authorization"] == "true" and config["enable_envvars_config"] == "false"
    assert config["allowed_urls"] == "(?!)" and config["enable_model_api"] == "false"


def test_v1_and_v2_as_the_wrapper_forwards_them(served, tiny_ckpt):
    url, _, _ = served
    predictor = Predictor.from_checkpoint(tiny_ckpt)
    texts = ["will it rain tomorrow", "play some jazz"]
    expected = predictor.predict(texts, top_k=3)
    r = requests.post(f"{url}/v1/models/{NAME}:predict", json={"instances": texts}, timeout=30)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [e["label"] for e in expected]
    body = {"id": "k1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}
    r = requests.post(f"{url}/v2/models/{NAME}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["id"]) == (NAME, "k1")
    assert answer["outputs"][0]["data"] == [e["label"] for e in expected]
    # the wrapper's :explain carries no Content-Type
    r = requests.post(f"{url}/v1/models/{NAME}:explain", data=json.dumps({"instances": ["rain"]}), timeout=30,
                      headers={"Content-Type": ""})
    assert r.status_code == 200 and r.json()["explanations"][0]["words"][0]["word"] == "rain", r.text


def test_malformed_bodies_get_400_with_the_json_shape(served):
    url, _, _ = served
    r = requests.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": [{"name": "t", "shape": [1],
                                                                         "datatype": "FP32", "data": [1.0]}]},
                      timeout=30)
    assert r.status_code == 400 and r.json()["error_type"] == "validation" and "BYTES" in r.json()["error"]
    r = requests.post(f"{url}/v1/models/{NAME}:predict", json={"instances": []}, timeout=30)
    assert r.status_code == 400 and "'instances' is empty" in r.json()["error"]
