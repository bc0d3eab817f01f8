"""The Flask app the flask-limiter tests run under gunicorn: @limiter.limit("50/minute"), as a
user would write it, with headers. TRAFFIC_TEST_STORE is "STRATEGY URI": flask-limiter's
strategy (fixed-window, fixed-window-elastic-expiry, moving-window) and its storage URI
(traffic+memory://NAME, or limits' own memory:// to show what that does).
"""

import os

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import traffic  # noqa: F401  (registers the traffic+ storage URIs with limits)

strategy, uri = os.environ["TRAFFIC_TEST_STORE"].split(" ", 1)
app = Flask(__name__)
limiter = Limiter(get_remote_address, app=app, storage_uri=uri, strategy=strategy, headers_enabled=True)


@app.get("/limited")
@limiter.limit("50/minute")
def limited():
    return {"pid": os.getpid()}


@app.get("/health")
@limiter.exempt
def health():
    return {"pid": os.getpid()}
