"""TorchServe handler: validate each request, classify the texts of all valid ones in shared forward passes.

The model code is textclf/, the request protocol protocol/, both shipped inside the .mar next to the checkpoint
files; this handler only hands TorchServe's requests to protocol/, their texts to the Predictor, and the answers
back. No request can fail another: a bad request gets its own 4xx; if a shared forward pass raises, each request
of the batch is run again alone and only the one that still fails gets a 500. Requests, forms and errors: README
"Request and response contract" and "Request protocol".

TorchServe takes the one class this module defines as the handler: helpers live in textclf/ and protocol/.
"""
import fcntl
import logging
import os
import tempfile
import time
from http import HTTPStatus

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import protocol
from protocol import Failure, Limits, ModelInfo, Request, RequestError, parse_request
from textclf.explain import explain, words
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
        self.model_info = ModelInfo(
            name=model.get("modelName") or getattr(context, "model_name", "model"),
            version=str(model.get("modelVersion", "1.0")), labels=self.predictor.labels,
            multi_label=self.predictor.multi_label, out_of_scope=self.predictor.out_of_scope_threshold is not None,
            platform="pytorch_torchserve" if isinstance(self.predictor.model, torch.nn.Module) else "onnxruntime_onnx")
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

    def _headers(self, idx):
        """The request's HTTP headers, as TorchServe passes them (names as the client wrote them), without the
        per-body entries ({"body": {"content-type": ...}}) it keeps in the same map."""
        return {k: v for k, v in (self.context.get_all_request_header(idx) or {}).items() if isinstance(v, str)}

    def _content_type(self, idx, row, headers):
        """The client's Content-Type header as sent, parameters (charset) included; TorchServe's per-body
        content type has them stripped."""
        sent = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
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
                headers = self._headers(idx)
                request = parse_request(row, self._content_type(idx, row, headers), self.predictor.labels,
                                        self.top_k, self.limits, headers.get("explain") == "True", headers)
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
        """{position: (logits (n_texts, num_labels), in-scope scores (n_texts,) or None) or Failure} for
        [(position, Request)]: one shared run in bounded forward passes; if that raises, each request alone.
        The scores (Predictor.scored_logits) come only where the model has a reject threshold."""
        if not requests:
            return {}
        texts = [t for _, r in requests for t in r.texts]
        try:
            logits, scores = self._predict(texts, stats)
        except Exception as e:
            if len(requests) == 1:
                log.error("request %d: the forward pass raised %s", requests[0][0], type(e).__name__)
                return {requests[0][0]: Failure(f"the model failed on this request ({type(e).__name__})")}
            log.error("a forward pass over %d requests raised %s; running each alone", len(requests),
                      type(e).__name__)
            return {k: v for item in requests for k, v in self._classify([item], stats).items()}
        out, row = {}, 0
        for position, request in requests:
            end = row + len(request.texts)
            out[position] = logits[row: end], None if scores is None else scores[row: end]
            row = end
        return out

    def _predict(self, texts, stats):
        """(logits, in-scope scores or None) of texts."""
        threads = self._threads_for(len(texts))
        if threads == self.threads or not self._borrow():
            return self.predictor.scored_logits(texts, self.batch_texts, stats)
        torch.set_num_threads(threads)
        try:
            return self.predictor.scored_logits(texts, self.batch_texts, stats)
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
        valid = [(i, p) for i, p in enumerate(parsed) if isinstance(p, Request) and p.form != "metadata"]
        results = self._classify([(i, r) for i, r in valid if not r.explain], stats)
        results.update({i: self._explain(i, r, stats) for i, r in valid if r.explain})
        return parsed, results, stats

    def _answer(self, request, result, stats):
        """The typed answer (protocol.answers) to a valid request."""
        if request.form == "metadata":
            return protocol.metadata(self.model_info)
        if request.explain:
            return protocol.explanation(request, result)
        logits, scores = result
        predictions = self.predictor.answers(logits, protocol.labels_to_rank(request, self.model_info), scores)
        stats["out_of_scope"] = stats.get("out_of_scope", 0) + sum(p.get("out_of_scope", False) for p in predictions)
        return protocol.prediction(request, predictions, self.model_info)

    def postprocess(self, output):
        """-> one answer per request: compact JSON as a str (TorchServe passes strings through; a dict it would
        indent), or bytes for a binary v2 answer; the answers of a batch travel to the frontend in one message
        of at most max_response_size."""
        parsed, results, stats = output
        answers, statuses = [], []
        for idx, item in enumerate(parsed):
            result = results.get(idx)
            error = result if isinstance(item, Request) else item
            if isinstance(item, Request) and not isinstance(result, Failure):
                reply = protocol.reply(self._answer(item, result, stats))
                if reply.size <= self.max_answer_bytes:
                    answers.append(self._send(idx, reply))
                    statuses.append(200)
                    continue
                error = RequestError(f"the answer would take {reply.size} bytes; the limit is "
                                     f"{self.max_answer_bytes}: ask for a smaller top_k or fewer texts", 413)
            answers.append(self._send(idx, protocol.reply(protocol.error(str(error), error.status), error.status)))
            statuses.append(error.status)
            if error.status not in (500, 503):
                log.info("request %d refused (%d): %s", idx, error.status, error)
        self._record(statuses, stats, self._arrivals(len(parsed)))
        return answers

    def _arrivals(self, n):
        """When the proxy took each request (its X-Request-Start: t=SECONDS, nginx's $msec), or None for a request
        that did not come through it: TorchServe itself does not tell the handler when a request arrived."""
        arrivals = []
        for idx in range(n):
            value = next((v for k, v in self._headers(idx).items() if k.lower() == "x-request-start"), "")
            try:
                arrivals.append(float(value.removeprefix("t=")) if value.startswith("t=") else None)
            except ValueError:
                arrivals.append(None)
        return arrivals

    def _send(self, idx, reply):
        """Content type, status and headers of one answer -> its body."""
        self.context.set_response_content_type(idx, reply.content_type)
        if reply.status != 200:
            self.context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, idx)
        for name, value in reply.headers.items():
            self.context.set_response_header(idx, name, value)
        return reply.body

    def _record(self, statuses, stats, arrivals=()):
        """Prometheus counters (through TorchServe's metrics): requests by outcome and status, and the work; and
        histograms, in seconds: the time from the proxy taking a request to its answer (queue and handler; only
        for requests that came through the proxy), and the tokenization and forward time of each batch."""
        metrics = self.context.metrics
        now = time.time()
        for arrived in arrivals:
            if arrived is not None and 0 <= now - arrived < 86400:
                metrics.add_metric(METRIC_PREFIX + "request_duration_seconds", now - arrived, "seconds", None, [],
                                   MetricTypes.HISTOGRAM)
        for key in ("tokenize_ms", "forward_ms"):
            if key in stats:
                metrics.add_metric(f"{METRIC_PREFIX}{key[:-3]}_seconds", stats[key] / 1e3, "seconds", None, [],
                                   MetricTypes.HISTOGRAM)
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
