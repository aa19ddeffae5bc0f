"""Staging admin dashboard: the queue's status behind HTTP basic auth, as a page and as JSON."""

import base64
import hmac
import html

from common import HTTPError, env, request_json, serve, setup_logging

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>Workshop queue (staging)</title></head>
<body><h1>Workshop queue (staging)</h1>
<table>{rows}</table>
</body></html>
"""


class Admin:
    routes = (("GET", r"/", "page"), ("GET", r"/api/status", "status"))

    def __init__(self, logger):
        self.logger = logger
        self.password = env("ADMIN_PASSWORD", "")
        self.queue_manager = env("QUEUE_MANAGER_URL", "http://queue-manager:3000").rstrip("/")

    def authorize(self, request):
        """401 unless the request carries admin and ADMIN_PASSWORD (never with an empty password)."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            user = password = ""
        # compare_digest: the time taken tells nothing about the password.
        matches = hmac.compare_digest(password.encode(), self.password.encode())
        if scheme.lower() != "basic" or user != "admin" or not self.password or not matches:
            raise HTTPError(401, "Not authenticated", {"WWW-Authenticate": 'Basic realm="admin"'})

    def queue_status(self):
        try:
            status, body = request_json("GET", f"{self.queue_manager}/api/queue/status", timeout=5)
        except OSError as error:
            raise HTTPError(502, f"Queue manager unreachable: {error}") from error
        if status != 200:
            raise HTTPError(502, f"Queue manager answered {status}: {body}")
        return body

    def status(self, request):
        self.authorize(request)
        return 200, self.queue_status()

    def page(self, request):
        self.authorize(request)
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
            for key, value in self.queue_status().items()
        )
        return 200, PAGE.format(rows=rows), "text/html; charset=utf-8"


def main():
    serve(Admin(setup_logging("admin")), env("ADMIN_PORT", 8080, int))


if __name__ == "__main__":
    main()
