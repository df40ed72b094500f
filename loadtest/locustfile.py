"""Load test for one TorchServe text-classification model: POST dataset sentences, check every answer.

Each simulated user sends sentences drawn at random from a data file, back to back (no think time),
half as `Content-Type: text/plain` bodies and half as JSON `{"text": ...}`. An answer counts as a
success only when it is HTTP 200 with a JSON object whose "label" is one of the model's labels;
anything else is a failure with its reason (see locust's *_failures.csv).

Environment variables (the host comes from locust's --host and must be loopback):
  TS_MODEL      model name, the URL segment of /predictions/NAME            (default: snips)
  TS_KEY_FILE   TorchServe's key_file.json; its "inference" key is sent as
                `Authorization: Bearer KEY`; empty: send no Authorization   (default: key_file.json)
  TS_DATA       labelled data file (text and label tab-separated, either column order), read with
                textclf.data.read_examples; its texts are the requests         (default: data/snips/test.txt)
  TS_LABELS     the model's label set: a labels.json file (for instance the checkpoint's) or a
                comma-separated list. Default: the labels of TS_DATA plus those of the train split
                next to it, if there is one (a model knows the labels it was trained on).
Relative paths are taken from the current directory, then from the repository root.

Usually started by loadtest/run.sh; by hand:
  TS_KEY_FILE=/path/to/key_file.json .venv/bin/locust -f loadtest/locustfile.py --headless \
      --host http://127.0.0.1:8080 --users 4 --spawn-rate 4 --run-time 10s
"""
import ipaddress
import json
import os
import random
from pathlib import Path
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, constant, events, task
from locust.stats import CSV_STATS_INTERVAL_SEC

from textclf.data import find_split, read_examples

from loadtest.answers import check_answer

ROOT = Path(__file__).resolve().parents[1]

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class SettingsError(ValueError):
    pass


def resolve(path):
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return ROOT / path if (ROOT / path).exists() else path


def is_loopback(host):
    """True for http(s)://localhost, 127.0.0.0/8 and [::1] URLs."""
    try:
        parts = urlsplit(host or "")
        name = parts.hostname
        if parts.scheme not in ("http", "https") or not name:
            return False
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:   # not an IP address, or a bad port
        return False


def read_key(path):
    if not str(path):
        return None
    path = resolve(path)
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
        return keys["inference"]["key"]
    except OSError as e:
        raise SettingsError(f"TS_KEY_FILE {path}: cannot read ({e.strerror}); TorchServe writes key_file.json "
                            "in the directory it was started from") from None
    except (ValueError, KeyError, TypeError):
        raise SettingsError(f"TS_KEY_FILE {path}: expected TorchServe's key file with "
                            '{"inference": {"key": ...}}') from None


def read_labels(spec, data_path, data_labels, columns):
    if spec:
        path = resolve(spec)
        if path.is_file():
            labels = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise SettingsError(f"TS_LABELS {path}: expected a JSON list of label strings")
            return set(labels)
        return {x.strip() for x in spec.split(",") if x.strip()}
    labels = set(data_labels)
    train = find_split(data_path.parent, "train", False)
    if train and train.resolve() != data_path.resolve():
        labels |= {e.label for e in read_examples(train, columns)[0]}
    return labels


def load_settings(environ=os.environ):
    model = environ.get("TS_MODEL", "snips")
    if not model or not set(model) <= NAME_CHARS:
        raise SettingsError(f"TS_MODEL {model!r}: a model name holds only letters, digits, '_', '-' and '.'")
    data = resolve(environ.get("TS_DATA", "data/snips/test.txt"))
    examples, columns = read_examples(data)   # DataError names file:line
    labels = read_labels(environ.get("TS_LABELS", ""), data, {e.label for e in examples}, columns)
    if not labels:
        raise SettingsError("TS_LABELS holds no labels")
    return {"model": model, "key": read_key(environ.get("TS_KEY_FILE", "key_file.json")),
            "texts": [e.text for e in examples], "labels": labels, "data": str(data)}


SETTINGS = {}


@events.init.add_listener
def _check_and_load(environment, **_):
    """Refuse a non-loopback host and read the settings once, before any user starts.

    An exception here makes locust log it and exit with code 1 before sending anything.
    """
    if not is_loopback(environment.host):
        raise SettingsError(f"--host {environment.host!r} refused: only http://127.0.0.0/8, localhost or [::1]")
    SETTINGS.update(load_settings())
    # gevent's loop caches the time; reading the settings can block it for a while, and a stale clock makes
    # locust's --run-time timer fire that much early.
    gevent.get_hub().loop.update_now()


@events.test_stop.add_listener
def _let_csv_catch_up(environment, **_):
    """Locust rewrites PREFIX_stats.csv once a second and not again at exit, so the file would miss the
    last second's requests and those finished during --stop-timeout. Users have stopped by now: one
    more writer cycle makes the CSV agree with the final summary."""
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)


class TextClassifierUser(FastHttpUser):
    wait_time = constant(0)       # closed loop: each user keeps exactly one request in flight
    connection_timeout = 10.0
    network_timeout = 60.0        # above TorchServe's 30 s response timeout, so its 5xx arrive

    def on_start(self):
        key = SETTINGS["key"]
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.path = f"/predictions/{SETTINGS['model']}"

    @task
    def text_plain(self):
        text = random.choice(SETTINGS["texts"])
        self._post(text.encode("utf-8"), "text/plain", "text")

    @task
    def json_body(self):
        text = random.choice(SETTINGS["texts"])
        self._post(json.dumps({"text": text}).encode("utf-8"), "application/json", "json")

    def _post(self, body, content_type, kind):
        headers = {**self.auth, "Content-Type": content_type, "Accept": "application/json"}
        with self.client.post(self.path, data=body, headers=headers, name=f"{self.path} [{kind}]",
                              catch_response=True) as response:
            reason = check_answer(response.status_code, response.content, SETTINGS["labels"],
                                  getattr(response, "error", None))
            if reason:
                response.failure(reason)
            else:
                response.success()
