"""TorchServe handler: validate each request, classify the texts of all valid ones in shared forward passes.

The model code is textclf/, shipped inside the .mar next to the checkpoint files; this handler only turns
TorchServe requests into texts and predictions into JSON. No request can fail another: a bad request gets its
own 4xx; if a shared forward pass raises, each request of the batch is run again alone and only the one that
still fails gets a 500. Requests, forms and errors: README "Request and response contract".

TorchServe takes the one class this module defines as the handler: helpers live in textclf/.
"""
import fcntl
import json
import logging
import os
import tempfile
import time
from http import HTTPStatus

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from textclf.explain import explain, words
from textclf.inputs import Failure, Limits, Request, RequestError, parse_request
from textclf.predict import Predictor, usable_cores, worker_threads

log = logging.getLogger(__name__)
WARMUP_TEXTS = ["warm up", "a slightly longer sentence to warm up the model before traffic arrives"]
METRIC_PREFIX = "textclf_"


class TextClassifierHandler(BaseHandler):
    def initialize(self, context):
        started = time.time()
        props = context.system_properties
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        settings = yaml_config.get("handler") or {}
        self.limits = Limits.from_settings(settings)
        self.batch_texts = int(settings.get("max_batch_texts", 64))      # texts per forward pass
        self.max_batch_tokens = int(settings.get("max_batch_tokens", 32768))
        self.max_answer_bytes = int(settings.get("max_answer_bytes", 1000000))
        workers = int(yaml_config.get("minWorkers", 1) or 1)
        cores = usable_cores()
        threads = worker_threads(settings.get("torch_threads"), workers)
        torch.set_num_threads(threads)
        # One thread pool per worker, no larger than its share: the fast tokenizer's (rayon, sized on first
        # use) and torch's inter-op pool (the forward pass has no parallel branches to run on it).
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:   # already set in this process (only possible before any parallel work)
            pass
        # A TorchServe batch of this many texts or more (a request of many texts) may use the cores that
        # nothing else runs on: one request goes to one worker, which at cores / workers threads would leave
        # the other cores idle when the other workers are.
        self.cores, self.threads, self._borrow_lock = cores, threads, None
        self.parallel_min_texts = int(settings.get("parallel_min_texts", 32)) or 1 << 30
        device = self._device(props.get("gpu_id"), yaml_config.get("deviceType"))
        self.predictor = Predictor.from_checkpoint(props["model_dir"], device, threads,
                                                   str(settings.get("cuda_precision", "fp16")))
        self.predictor.pass_overhead_tokens = int(settings.get("pass_overhead_tokens",
                                                               self.predictor.pass_overhead_tokens))
        self.top_k = min(int(settings.get("top_k", 3)), len(self.predictor.labels))
        self._reject_settings(settings)
        model = (getattr(context, "manifest", None) or {}).get("model", {})
        self.model_name = model.get("modelName") or getattr(context, "model_name", "model")
        self.model_version = str(model.get("modelVersion", "1.0"))
        with torch.inference_mode():
            self.predictor.predict_proba(WARMUP_TEXTS)
        self.initialized = True
        log.info("loaded %s on %s (%s) with %d torch threads, %d labels, in %.1fs", props["model_dir"], device,
                 self.predictor.precision, threads, len(self.predictor.labels), time.time() - started)

    def _reject_settings(self, settings):
        """handler.out_of_scope_threshold overrides the checkpoint's (a number, or "none" to answer every text
        in scope); handler.fallback_label names the label an out-of-scope answer carries (default null)."""
        if "out_of_scope_threshold" in settings:
            value = settings["out_of_scope_threshold"]
            self.predictor.out_of_scope_threshold = None if value in (None, "none") else float(value)
        fallback = settings.get("fallback_label")
        self.predictor.fallback_label = None if fallback is None else str(fallback)

    @staticmethod
    def _device(gpu_id, device_type):
        """cuda:<the GPU TorchServe gave this worker>, or the CPU, saying why when a GPU was asked for."""
        if gpu_id is not None and torch.cuda.is_available():
            return f"cuda:{int(gpu_id)}"
        if gpu_id is not None:
            log.warning("TorchServe gave this worker GPU %s, but CUDA is not available to PyTorch here (torch %s): "
                        "running on CPU", gpu_id, torch.__version__)
        elif str(device_type).lower() == "gpu":
            log.warning("the model-config asks for GPU workers (deviceType: gpu), but TorchServe sees no GPU "
                        "(number_of_gpu 0): running on CPU")
        return "cpu"

    def _is_explain(self):
        # BaseHandler reads request 0's "explain" header for the whole batch, but TorchServe batches
        # /explanations with /predictions: each request is routed on its own header in preprocess().
        return False

    def _content_type(self, idx, row):
        """The client's Content-Type header as sent, parameters (charset) included; TorchServe's per-body
        content type has them stripped."""
        headers = self.context.get_all_request_header(idx) or {}
        sent = next((v for k, v in headers.items() if k.lower() == "content-type" and isinstance(v, str)), None)
        if sent is not None:
            return sent
        for name in ("data", "body"):
            if name in row:
                header = self.context.get_request_header(idx, name)
                if isinstance(header, dict):
                    return header.get("content-type") or ""
        return ""

    def _work(self, request):
        """An upper bound of the tokens the model runs for a request: a text is truncated to max_length tokens
        and a token covers at least one character (plus [CLS] and [SEP]); an explanation runs its text once
        whole and once without each word."""
        tokens = [min(self.predictor.max_length, len(t) + 2) for t in request.texts]
        if request.explain:
            return sum((len(words(t)) + 1) * n for t, n in zip(request.texts, tokens))
        return sum(tokens)

    def preprocess(self, data):
        """-> one Request, RequestError or Failure per request. The model work of one TorchServe batch is
        bounded by max_batch_tokens, so that a batch stays well inside responseTimeout (past which TorchServe
        fails every request of the batch): a request over it alone gets 413; one that would take the batch
        over it, 503 to retry (the first request of a batch always runs)."""
        parsed, budget = [], self.max_batch_tokens
        for idx, row in enumerate(data):
            try:
                request = parse_request(row, self._content_type(idx, row), self.predictor.labels, self.top_k,
                                        self.limits, self.context.get_request_header(idx, "explain") == "True")
                work = self._work(request)
                if work > self.max_batch_tokens:
                    raise RequestError(f"the request holds up to {work} tokens of model work; the limit is "
                                       f"{self.max_batch_tokens} per request: send fewer or shorter texts", 413)
                if work > budget and budget < self.max_batch_tokens:
                    raise RequestError("the server is busy with other large requests: retry", 503)
                budget -= work
                parsed.append(request)
            except RequestError as e:
                parsed.append(e)
            except Exception as e:   # a bug of ours must not fail the other requests of the batch
                log.error("request %d: parsing raised %s", idx, type(e).__name__)
                parsed.append(Failure(f"the server could not read this request ({type(e).__name__})"))
        return parsed

    def _classify(self, requests, stats):
        """{position: logits (n_texts, num_labels) or Failure} for [(position, Request)]: one shared run in
        bounded forward passes; if that raises, each request alone."""
        if not requests:
            return {}
        texts = [t for _, r in requests for t in r.texts]
        try:
            probs = self._predict(texts, stats)
        except Exception as e:
            if len(requests) == 1:
                log.error("request %d: the forward pass raised %s", requests[0][0], type(e).__name__)
                return {requests[0][0]: Failure(f"the model failed on this request ({type(e).__name__})")}
            log.error("a forward pass over %d requests raised %s; running each alone", len(requests),
                      type(e).__name__)
            return {k: v for item in requests for k, v in self._classify([item], stats).items()}
        out, row = {}, 0
        for position, request in requests:
            out[position] = probs[row: row + len(request.texts)]
            row += len(request.texts)
        return out

    def _predict(self, texts, stats):
        threads = self._threads_for(len(texts))
        if threads == self.threads or not self._borrow():
            return self.predictor.predict_logits(texts, self.batch_texts, stats)
        torch.set_num_threads(threads)
        try:
            return self.predictor.predict_logits(texts, self.batch_texts, stats)
        finally:
            torch.set_num_threads(self.threads)
            fcntl.flock(self._borrow_lock, fcntl.LOCK_UN)

    def _borrow(self):
        """One worker at a time may borrow idle cores: a lock file in the temp folder TorchServe gives all its
        workers (two idle workers seeing the same idle cores would otherwise both take them)."""
        if self._borrow_lock is None:
            path = os.path.join(tempfile.gettempdir(), f"textclf-borrow-{os.getuid()}.lock")
            self._borrow_lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._borrow_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _threads_for(self, texts):
        """Torch threads for a forward run over `texts` texts: the configured ones, or for a large run as many
        as there are cores idle now. Idle is read from the kernel's count of runnable tasks (/proc/loadavg,
        the median of 5 looks 1 ms apart, less this worker): other busy workers keep it at the configured
        count, so a large request never oversubscribes a loaded machine."""
        if texts < self.parallel_min_texts or self.threads >= self.cores:
            return self.threads
        try:
            looks = []
            for _ in range(5):
                with open("/proc/loadavg", encoding="ascii") as f:
                    looks.append(int(f.read().split()[3].split("/")[0]))
                time.sleep(0.001)
        except (OSError, ValueError, IndexError):
            return self.threads
        others = sorted(looks)[2] - 1
        return max(self.threads, min(self.cores, self.cores - others))

    def _explain(self, position, request, stats):
        try:
            return [explain(self.predictor, text, request.label, self.batch_texts, stats) for text in request.texts]
        except Exception as e:
            log.error("request %d: the explanation raised %s", position, type(e).__name__)
            return Failure(f"the model failed to explain this request ({type(e).__name__})")

    def inference(self, parsed):
        stats = {}
        valid = [(i, p) for i, p in enumerate(parsed) if isinstance(p, Request)]
        results = self._classify([(i, r) for i, r in valid if not r.explain], stats)
        results.update({i: self._explain(i, r, stats) for i, r in valid if r.explain})
        return parsed, results, stats

    def _answer(self, request, result, stats):
        if request.explain:
            return result[0] if request.form == "one" else {"explanations": result}
        k = request.top_k
        if request.form == "v2" and self.predictor.multi_label and not request.top_k_asked:
            k = len(self.predictor.labels)   # v2, multi-label: every label ranked, flagged where predicted
        predictions = self.predictor.answers(result, k)
        stats["out_of_scope"] = stats.get("out_of_scope", 0) + sum(p.get("out_of_scope", False) for p in predictions)
        if request.form == "one":
            return predictions[0]
        if request.form in ("many", "v1"):
            return {"predictions": predictions}
        return self._v2_answer(request, predictions)

    def _v2_answer(self, request, predictions):
        if self.predictor.multi_label:
            return self._v2_multi_label(request, predictions)
        n, k = len(predictions), request.top_k if request.top_k_asked else 1
        ranked = [p["top_k"][:k] for p in predictions]
        shape = [n, k] if request.top_k_asked else [n]
        columns = {
            "label": {"name": "label", "shape": shape, "datatype": "BYTES",
                      "data": [x["label"] for row in ranked for x in row]},
            "score": {"name": "score", "shape": shape, "datatype": "FP32",
                      "data": [x["score"] for row in ranked for x in row]},
            # per text: below the reject threshold (its label and score columns still rank the labels)
            "out_of_scope": {"name": "out_of_scope", "shape": [n], "datatype": "BOOL",
                             "data": [p.get("out_of_scope", False) for p in predictions]},
        }
        answer = {"model_name": self.model_name, "model_version": self.model_version}
        if request.id is not None:
            answer["id"] = request.id
        names = request.outputs or (("label", "score") + (
            ("out_of_scope",) if self.predictor.out_of_scope_threshold is not None else ()))
        answer["outputs"] = [columns[name] for name in names if name in columns]   # "selected": multi-label only
        return answer

    def _v2_multi_label(self, request, predictions):
        """Labels ranked per text, shape [n, k] (k: top_k if asked, else every label), with "selected" marking
        the labels at or over their thresholds: a fixed-shape tensor for label sets of any size."""
        n, k = len(predictions), len(predictions[0]["top_k"]) if predictions else 0
        chosen = [{x["label"] for x in p["labels"]} for p in predictions]
        cells = [(x, i) for i, p in enumerate(predictions) for x in p["top_k"]]
        columns = {
            "label": {"name": "label", "shape": [n, k], "datatype": "BYTES", "data": [x["label"] for x, _ in cells]},
            "score": {"name": "score", "shape": [n, k], "datatype": "FP32", "data": [x["score"] for x, _ in cells]},
            "selected": {"name": "selected", "shape": [n, k], "datatype": "BOOL",
                         "data": [x["label"] in chosen[i] for x, i in cells]},
        }
        answer = {"model_name": self.model_name, "model_version": self.model_version}
        if request.id is not None:
            answer["id"] = request.id
        answer["outputs"] = [columns[name] for name in (request.outputs or ("label", "score", "selected"))
                             if name in columns]
        return answer

    def postprocess(self, output):
        """-> one compact JSON string per request (TorchServe passes strings through; a dict it would indent,
        and the answers of a batch travel to the frontend in one message of at most max_response_size)."""
        parsed, results, stats = output
        answers, statuses = [], []
        for idx, item in enumerate(parsed):
            self.context.set_response_content_type(idx, "application/json")
            result = results.get(idx)
            error = result if isinstance(item, Request) else item
            if isinstance(item, Request) and not isinstance(result, Failure):
                answer = json.dumps(self._answer(item, result, stats), ensure_ascii=False, separators=(",", ":"))
                size = len(answer.encode("utf-8"))
                if size <= self.max_answer_bytes:
                    answers.append(answer)
                    statuses.append(200)
                    continue
                error = RequestError(f"the answer would take {size} bytes; the limit is "
                                     f"{self.max_answer_bytes}: ask for a smaller top_k or fewer texts", 413)
            kind = {500: "internal", 503: "overload"}.get(error.status, "validation")
            self.context.set_response_status(error.status, HTTPStatus(error.status).phrase, idx)
            answers.append(json.dumps({"error": str(error), "error_type": kind, "status": error.status},
                                      ensure_ascii=False, separators=(",", ":")))
            statuses.append(error.status)
            if kind == "validation":
                log.info("request %d refused (%d): %s", idx, error.status, error)
        self._record(statuses, stats)
        return answers

    def _record(self, statuses, stats):
        """Prometheus counters (through TorchServe's metrics): requests by outcome and status, and the work."""
        metrics = self.context.metrics
        for status in sorted(set(statuses)):
            outcome = "answered" if status == 200 else f"{status // 100}xx"
            metrics.add_counter(METRIC_PREFIX + "requests_total", statuses.count(status), None,
                                [Dimension("outcome", outcome), Dimension("status", str(status))])
        metrics.add_counter(METRIC_PREFIX + "batches_total", 1, None, [])
        for key in ("forward_passes", "texts", "tokens", "padded_tokens", "out_of_scope"):
            if stats.get(key):
                metrics.add_counter(f"{METRIC_PREFIX}{key}_total", stats[key], None, [])
        for key in ("tokenize_ms", "forward_ms"):
            if stats.get(key):
                metrics.add_counter(f"{METRIC_PREFIX}{key[:-3]}_milliseconds_total", round(stats[key], 3), None, [])
