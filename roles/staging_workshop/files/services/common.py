"""What the staging services share: settings from the environment, the platform's log format, JSON over HTTP."""

import json
import logging
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def env(name, default, cast=str):
    """The setting `name` from the environment cast with `cast`, or `default` when unset or empty."""
    raw = os.environ.get(name, "")
    return cast(raw) if raw else default


def iso(epoch):
    """ISO-8601 UTC timestamp of `epoch` as the platform writes heartbeats and events: Python's
    isoformat() of an aware datetime (2026-11-29T03:39:09.123456+00:00; no fraction on a whole second)."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def job_time(epoch):
    """ISO-8601 UTC timestamp of `epoch` as the platform writes job records (pydantic's JSON of an aware
    datetime): a `Z` instead of +00:00 (2026-01-28T14:03:11.482113Z; no fraction on a whole second)."""
    return iso(epoch).replace("+00:00", "Z")


def epoch_of(text):
    """Epoch seconds of a timestamp written by iso() or job_time()."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class JSONFormatter(logging.Formatter):
    """One JSON object a line, for log collectors (LOG_FORMAT=json)."""

    def format(self, record):
        line = {"timestamp": self.formatTime(record), "name": record.name, "level": record.levelname}
        line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(name):
    """Log to stdout in the platform's format (JSON lines with LOG_FORMAT=json); returns the service's logger."""
    # StreamHandler flushes after every record, so `docker compose logs` shows each line at once.
    handler = logging.StreamHandler(sys.stdout)
    if env("LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JSONFormatter())
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, handlers=[handler])
    return logging.getLogger(name)


def on_sigterm(callback=None):
    """Exit 0 on SIGTERM and SIGINT (a PID 1 in a container ignores SIGTERM without a handler), after `callback`."""

    def stop(signum, frame):
        if callback:
            callback()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


class HTTPError(Exception):
    """An error answer: status and detail, sent as {"detail": ...} like FastAPI does."""

    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class JSONHandler(BaseHTTPRequestHandler):
    """Dispatches to the methods of `self.server.app` named by its `routes`: (method, path regex, name).

    A route method gets this handler and the path's groups, and returns (status, body) with a JSON body,
    or (status, text, content type).
    """

    server_version = "staging"

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def query(self, name, default=None):
        return dict(parse_qsl(urlsplit(self.path).query)).get(name, default)

    def json_body(self):
        """The request's JSON object ({} when empty); 400 when it is not an object."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            raise HTTPError(400, f"Invalid JSON body: {error}") from error
        if not isinstance(body, dict):
            raise HTTPError(400, "The body must be a JSON object")
        return body

    def _dispatch(self, method):
        app = self.server.app
        path = urlsplit(self.path).path
        headers = {}
        try:
            for verb, pattern, name in app.routes:
                match = re.fullmatch(pattern, path)
                if match and verb == method:
                    answer = getattr(app, name)(self, *match.groups())
                    break
            else:
                raise HTTPError(404, "Not Found")
        except HTTPError as error:
            answer, headers = (error.status, {"detail": error.detail}), error.headers
        except (ConnectionError, TimeoutError) as error:
            app.logger.error("%s %s: %s", method, path, error)
            answer = (503, {"detail": f"Service unavailable: {error}"})
        except Exception:
            app.logger.exception("%s %s failed", method, path)
            answer = (500, {"detail": "Internal server error"})
        self._send(*answer, headers=headers)

    def _send(self, status, body=None, content_type="application/json", headers=None):
        data = b"" if body is None else (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status != 204:
            self.wfile.write(data)

    def log_message(self, format, *args):
        # Access lines at DEBUG: the workers poll several times a second.
        self.server.app.logger.debug("%s - %s", self.address_string(), format % args)


def serve(app, port):
    """Serve `app` (routes, logger) on `port` until SIGTERM, then exit 0."""
    server = ThreadingHTTPServer(("0.0.0.0", port), JSONHandler)
    server.app = app
    on_sigterm()
    app.logger.info("Listening on port %d", port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.logger.info("Stopped")


def request_json(method, url, body=None, timeout=10, headers=None):
    """Call a JSON API; returns (status, decoded body or None). HTTP errors are answers; network errors raise OSError."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")
