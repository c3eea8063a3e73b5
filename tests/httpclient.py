"""Tiny loopback HTTP client for the serving tests (stdlib only).

Every error body any test receives through it is scanned for what must never
reach a client: traceback text, file paths, process or actor ids, colour codes.
"""

import json
import re
import urllib.error
import urllib.request

LEAKS = [
    (re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"), "traceback"),
    (re.compile(r"(?<![\w.])(?:/[\w.\-]+){2,}\.(?:py|json|gz|yaml|jsonl)\b|/work/|/tmp/|/root/|site-packages"), "path"),
    (re.compile(r"\bpid=\d+|actor_id|\b[0-9a-f]{32,}\b|ray::"), "process or actor id"),
    (re.compile(r"\x1b\["), "colour code"),
]


def leaks(body) -> list[str]:
    """What an error body gives away that it must not (empty when clean)."""
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return [what for rx, what in LEAKS if rx.search(text)]


def _checked(status, body):
    if status >= 400:
        found = leaks(body)
        assert not found, f"error body {status} leaks {', '.join(found)}: {body}"
    return status, body


def _json(data):
    try:
        return json.loads(data or b"{}")
    except ValueError:  # a proxy's plain-text error page
        return {"raw": data.decode("utf-8", "replace")}


def post(url, body, headers=None, raw=False, timeout=120):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return _checked(e.code, _json(e.read()))


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return _checked(e.code, _json(e.read()))
