"""Tiny loopback HTTP client for the serving tests (stdlib only)."""

import json
import urllib.error
import urllib.request


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
        return e.code, _json(e.read())


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())
