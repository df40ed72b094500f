"""What the load test counts as a good answer: standard library only, so that tests import it without locust
(whose gevent patches the importing process)."""
import json


def check_answer(status, content, labels, error=None):
    """None when the answer is a 200 JSON object with a known label (or an out-of-scope answer: label null or a
    fallback label with "out_of_scope": true; or a multi-label answer: "labels", each known); otherwise the
    reason it is not."""
    if not status:
        return f"no HTTP answer: {error}"
    text = (content or b"").decode("utf-8", "replace")
    if status != 200:
        return f"HTTP {status}: {text[:160]}"
    try:
        answer = json.loads(text)
    except ValueError:
        return f"HTTP 200 but not JSON: {text[:80]!r}"
    if isinstance(answer, dict) and isinstance(answer.get("labels"), list):
        unknown = [x.get("label") for x in answer["labels"] if not isinstance(x, dict) or x.get("label") not in labels]
        return f"labels {unknown!r} are not the model's" if unknown else None
    if not isinstance(answer, dict) or "label" not in answer:
        return f"HTTP 200 but no 'label' in the answer: {text[:80]!r}"
    if answer.get("out_of_scope") is True:
        return None   # the model's reject option: the label is null or the configured fallback
    if answer["label"] not in labels:
        return f"label {answer['label']!r} is not one of the model's {len(labels)} labels"
    return None
