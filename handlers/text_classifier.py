"""TorchServe handler: validate each request, classify the valid ones in one forward pass.

The model code is textclf/, shipped inside the .mar next to the checkpoint files; this handler only
turns TorchServe requests into texts and predictions into JSON. A bad request gets its own 4xx
status and message; the rest of its batch is answered normally.
"""
import logging
import os
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

from textclf.inputs import RequestError, parse_request
from textclf.predict import Predictor

log = logging.getLogger(__name__)
WARMUP_TEXTS = ["warm up", "a slightly longer sentence to warm up the model before traffic arrives"]


class TextClassifierHandler(BaseHandler):
    def initialize(self, context):
        started = time.time()
        props = context.system_properties
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        settings = yaml_config.get("handler") or {}
        self.top_k = int(settings.get("top_k", 3))
        self.max_chars = int(settings.get("max_chars", 20000))
        workers = int(yaml_config.get("minWorkers", 1) or 1)
        threads = int(settings.get("torch_threads", 0)) or max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        self.predictor = Predictor.from_checkpoint(props["model_dir"], device, threads)
        self.top_k = min(self.top_k, len(self.predictor.labels))
        with torch.inference_mode():
            self.predictor.predict_proba(WARMUP_TEXTS)
        self.initialized = True
        log.info("loaded %s on %s with %d torch threads, %d labels, in %.1fs", props["model_dir"], device,
                 threads, len(self.predictor.labels), time.time() - started)

    def _content_type(self, idx, row):
        for name in ("data", "body"):
            if name in row:
                header = self.context.get_request_header(idx, name)
                if isinstance(header, dict):
                    return header.get("content-type") or ""
        return self.context.get_request_header(idx, "Content-Type") or ""

    def preprocess(self, data):
        """-> list of (text, top_k) or RequestError, one per request."""
        parsed = []
        for idx, row in enumerate(data):
            try:
                parsed.append(parse_request(row, self._content_type(idx, row), len(self.predictor.labels),
                                            self.top_k, self.max_chars))
            except RequestError as e:
                parsed.append(e)
        return parsed

    def inference(self, parsed):
        valid = [p for p in parsed if not isinstance(p, RequestError)]
        probs = self.predictor.predict_proba([text for text, _ in valid], batch_size=max(1, len(valid)))
        return parsed, probs

    def postprocess(self, output):
        parsed, probs = output
        answers, row = [], 0
        for idx, item in enumerate(parsed):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(item, RequestError):
                self.context.set_response_status(item.status, str(item), idx)
                answers.append({"error": str(item), "error_type": "validation", "status": item.status})
                log.info("request %d refused (%d): %s", idx, item.status, item)
                continue
            answers.append(self.predictor.top_k(probs[row: row + 1], item[1])[0])
            row += 1
        return answers
