"""One real TorchServe for a test module, through the project's harness (serving/torchserve.py): checkpoints
archived with ./archive.sh into a private model store, served with the repository's config.properties as
shipped (token auth on, URLs refused) on free 127.0.0.1 ports, PYTHONPATH unset, a private TMPDIR and working
folder, OMP_NUM_THREADS=1, and always stopped. This file only adds what pytest needs: a skip without Java, a
failure with the log tail, and the request helpers the tests call.

    with torchserve(base, {"name": checkpoint, ...}, model_config_yaml) as server:
        server.predict(data=b"play jazz", model="name")
"""
import contextlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.torchserve import TorchServe, TorchServeError, archive

START_TIMEOUT = 120     # seconds until the first prediction of every model must answer
HTTP_TIMEOUT = 30
ARCHIVE_TIMEOUT = 180


class Server:
    """The harness's TorchServe as the tests see it: addresses, the two tokens as header dicts (`auth` may be
    replaced after a key rotation), and requests that default to the first model."""

    def __init__(self, ts):
        self.ts = ts
        self.inference, self.management, self.metrics = ts.inference, ts.management, ts.metrics
        self.run_dir, self.tmp = ts.cwd, ts.tmp
        self.models = list(ts.models)
        self.auth, self.manage_auth = ts.auth("inference"), ts.auth("management")

    def predict(self, content_type="text/plain", data=None, json_body=None, headers=None, auth=True, model=None):
        """POST /predictions/MODEL (default: the first model). content_type None sends no Content-Type."""
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
        h = {**(self.auth if auth else {}), **(headers or {})}
        return self.ts.predict(model or self.models[0], data, content_type, headers=h, auth=False,
                               timeout=HTTP_TIMEOUT)

    def manage(self, method, path, auth=True):
        return requests.request(method, self.management + path, headers=self.manage_auth if auth else {},
                                timeout=HTTP_TIMEOUT)

    def handler_calls(self):
        """How many batches the handlers have run so far (one HandlerTime metric each), once the count settles."""
        path, last = self.ts.log_dir / "model_metrics.log", -1
        for _ in range(20):
            count = path.read_text(errors="replace").count("HandlerTime") if path.is_file() else 0
            if count == last:
                return count
            last = count
            time.sleep(0.5)
        return last


@contextlib.contextmanager
def torchserve(base, checkpoints, model_config, start_timeout=START_TIMEOUT):
    """Archive {name: checkpoint folder} into base/model_store, serve them all from one TorchServe, yield
    a Server once every model answers, and stop TorchServe whatever happens."""
    if shutil.which("java") is None:
        pytest.skip("Java 17 is needed for TorchServe's frontend (run ./setup.sh)")
    store = base / "model_store"
    store.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:   # archive.sh is mostly start-up and zipping
        mars = dict(zip(checkpoints, pool.map(
            lambda item: archive(item[1], item[0], store, model_config, ARCHIVE_TIMEOUT).name, checkpoints.items())))
    with TorchServe(base, store, mars, env={"OMP_NUM_THREADS": "1"}) as ts:
        assert ts.config.get("disable_token_authorization") == "false", "the shipped config must keep token auth on"
        assert ts.config.get("enable_model_api") == "false"
        try:
            ts.wait_ready(timeout=start_timeout)
        except TorchServeError as e:
            pytest.fail(str(e))
        yield Server(ts)


@contextlib.contextmanager
def module_server(tmp_path_factory, prefix, checkpoints, model_config_text):
    """torchserve() in a fresh temp folder, with this model-config.yaml: the body of a module's server fixture."""
    base = tmp_path_factory.mktemp(prefix)
    (base / "model-config.yaml").write_text(model_config_text)
    with torchserve(base, checkpoints, base / "model-config.yaml") as server:
        yield server


def histograms(metrics_url):
    """{histogram name: {"buckets": {le: cumulative count}, "count": n, "sum": s}} of the textclf_* histograms,
    summed over the other labels, as prometheus_client's parser reads them."""
    from prometheus_client.parser import text_string_to_metric_families
    found = {}
    for family in text_string_to_metric_families(requests.get(metrics_url + "/metrics", timeout=10).text):
        if family.type != "histogram" or not family.name.startswith("textclf_"):
            continue
        h = found.setdefault(family.name, {"buckets": {}, "count": 0, "sum": 0.0})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                h["buckets"][le] = h["buckets"].get(le, 0) + sample.value
            elif sample.name.endswith("_count"):
                h["count"] += sample.value
            elif sample.name.endswith("_sum"):
                h["sum"] += sample.value
    return found
