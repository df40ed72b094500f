"""What the container image runs, run here without Docker: deploy/entrypoint.sh with a private model store,
config folder (the repository's config.properties and handlers/model-config.yaml, as the ConfigMap carries
them), key file (as the Secret carries it) and work folder, on free 127.0.0.1 ports, PYTHONPATH unset.

It checks what the Kubernetes manifests rely on: the probes' paths answer without a key, predictions need
one, a rotated key file takes effect in a running pod, TorchServe's own ports stay on loopback, SIGTERM stops
everything with status 0, and a TorchServe that dies takes the container down (status 1)."""
import os
import secrets
import shutil
import subprocess
import time

import pytest
import requests

from podutil import KEY, Pod, group_alive, model_store, started
from serving.torchserve import read_properties
from textclf.predict import Predictor

pytestmark = pytest.mark.serving
NAME = "toy"


@pytest.fixture(scope="module")
def store_and_config(tiny_ckpt, tmp_path_factory):
    """A model store with toy.mar (archived with handlers/model-config.yaml) and the config folder the
    ConfigMap mounts: the repository's config.properties and model-config.yaml, unchanged."""
    return model_store(tmp_path_factory.mktemp("container"), {NAME: tiny_ckpt})


@pytest.fixture(scope="module")
def pod(store_and_config, tmp_path_factory):
    with started(Pod(tmp_path_factory.mktemp("pod"), *store_and_config)) as p:
        yield p


def test_only_the_proxy_and_metrics_face_out_and_torchserve_keeps_its_ports_on_loopback(pod):
    config = read_properties(pod.work / "config.properties")
    ports = pod.ports
    assert config["inference_address"] == f"http://127.0.0.1:{ports['inference']}"
    assert config["management_address"] == f"http://127.0.0.1:{ports['management']}"
    assert config["metrics_address"] == f"http://127.0.0.1:{ports['ts_metrics']}"
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    assert config["disable_token_authorization"] == "true" and config["enable_model_api"] == "false"
    assert config["allowed_urls"] == "(?!)"
    import psutil
    pids = {p.pid for p in psutil.process_iter() if _pgid(p.pid) == pod.process.pid}
    # Java reports IPv4 sockets in their IPv6 form (::ffff:127.0.0.1)
    listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids}
    assert {port for _, port in listening} <= set(ports.values()), listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening   # the test binds even the outward ones to loopback
    assert ("127.0.0.1", ports["inference"]) in listening and ("127.0.0.1", ports["management"]) in listening


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_predictions_need_the_key_and_answer_as_the_model_does(pod, tiny_ckpt):
    texts = ["will it rain tomorrow", "play some jazz"]
    url = f"{pod.url}/predictions/{NAME}"
    r = requests.post(url, json={"texts": texts}, timeout=30)
    assert r.status_code == 401 and r.json()["error_type"] == "authentication"
    r = requests.post(url, json={"texts": texts}, headers=pod.auth("x" * 64), timeout=30)
    assert r.status_code == 401
    r = requests.post(url, json={"texts": texts}, headers=pod.auth(), timeout=30)
    assert r.status_code == 200, r.text
    expected = Predictor.from_checkpoint(tiny_ckpt).predict(texts, top_k=1)
    assert [p["label"] for p in r.json()["predictions"]] == [e["label"] for e in expected]
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["rain"]}]}
    r = requests.post(f"{pod.url}/v2/models/{NAME}/infer", json=body, headers=pod.auth(), timeout=30)
    assert r.status_code == 200 and r.json()["model_name"] == NAME, r.text
    # the handler's own refusals pass through the proxy unchanged
    r = requests.post(url, json={"text": ""}, headers=pod.auth(), timeout=30)
    assert r.status_code == 400 and r.json()["error_type"] == "validation"


def test_the_probes_answer_without_a_key(pod):
    r = requests.get(f"{pod.url}/ping", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    r = requests.get(f"{pod.url}/live", timeout=10)
    assert r.status_code == 200, r.text
    r = requests.get(f"{pod.metrics}/metrics", timeout=10)     # what Prometheus scrapes: no key in 0.12
    assert r.status_code == 200 and "ts_inference_requests_total" in r.text


def test_the_management_api_is_not_behind_the_proxy(pod):
    r = requests.get(f"{pod.url}/models", headers=pod.auth(), timeout=10)
    assert r.status_code != 200 or "models" not in r.text, r.text
    r = requests.post(f"{pod.url}/models?url={NAME}.mar", headers=pod.auth(), timeout=10)
    assert r.status_code in (400, 404, 405), r.text


def test_a_rotated_key_file_takes_effect_in_the_running_pod(pod):
    new = secrets.token_hex(32)
    staged = pod.keys.with_suffix(".new")
    staged.write_text(f"{KEY}\n{new}\n")
    os.replace(staged, pod.keys)
    time.sleep(1.5)      # the proxy looks at the file at most once a second
    url = f"{pod.url}/predictions/{NAME}"
    assert requests.post(url, data=b"rain", headers=pod.auth(new) | {"Content-Type": "text/plain"},
                         timeout=30).status_code == 200
    staged.write_text(f"{new}\n")
    os.replace(staged, pod.keys)
    time.sleep(1.5)
    assert requests.post(url, data=b"rain", headers=pod.auth() | {"Content-Type": "text/plain"},
                         timeout=30).status_code == 401
    staged.write_text(f"{KEY}\n")
    os.replace(staged, pod.keys)
    time.sleep(1.5)


def test_sigterm_stops_the_proxy_and_torchserve_with_status_0(pod):
    pgid = pod.process.pid
    assert pod.stop() == 0, pod.log_tail()
    assert not group_alive(pgid), "processes of the entrypoint outlived it"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{pod.url}/ping", timeout=5)
    assert "stopping (signal)" in pod.log_path.read_text()


def test_a_torchserve_that_cannot_start_takes_the_container_down(store_and_config, tmp_path):
    """TorchServe's inference port already taken: the frontend gives up, `torchserve --foreground` returns 0
    regardless, and the entrypoint must end with 1 and stop the proxy."""
    import socket
    store, config_dir = store_and_config
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = Pod(tmp_path, store, config_dir, {"TS_INFERENCE_PORT": str(taken.getsockname()[1])})
        p.start()
        try:
            code = p.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            final = p.stop()
    assert code == 1 and final == 1, p.log_tail()
    assert "TorchServe ended by itself" in p.log_path.read_text()


@pytest.mark.parametrize("problem", ["no key file", "placeholder key", "other model-config", "empty store"])
def test_unusable_settings_stop_before_anything_starts(store_and_config, tmp_path, problem):
    import yaml
    store, config_dir = store_and_config
    p = Pod(tmp_path, store, config_dir)
    expected = {"no key file": "cannot read the key file", "placeholder key": "no usable key",
                "other model-config": "was packed with another model-config.yaml than", "empty store": "no .mar file"}
    if problem == "no key file":
        p.keys.unlink()
    elif problem == "placeholder key":
        p.keys.write_text("replace-me\n")
    elif problem == "other model-config":
        other = tmp_path / "config"
        other.mkdir()
        shutil.copy(config_dir / "config.properties", other)
        settings = yaml.safe_load((config_dir / "model-config.yaml").read_text())
        settings["minWorkers"] = settings["maxWorkers"] = int(settings.get("maxWorkers", 1)) + 2
        (other / "model-config.yaml").write_text(yaml.safe_dump(settings))
        p.env["CONFIG_DIR"] = str(other)
    else:
        (tmp_path / "empty").mkdir()
        p.env["MODEL_STORE"] = str(tmp_path / "empty")
    p.start()
    code = p.process.wait(timeout=60)
    log = p.log_path.read_text()
    assert p.stop() == code == 2, log
    assert expected[problem] in log, log
    assert not (p.work / "logs").exists(), "TorchServe was started anyway"
