"""The one exception type the workshop helpers raise.

Helpers raise WorkshopError with a message that names the host, path or key at fault and
what to do, plus context fields; each module's main() turns it into fail_json(msg, **context).
"""


class WorkshopError(Exception):
    """A failure to report to the admin: `msg` says what and what to do; `context` is returned as fields."""

    def __init__(self, msg, **context):
        super().__init__(msg)
        self.msg = msg
        self.context = context


class WorkshopUnreachable(WorkshopError):
    """A part of the workshop that does not answer (Redis, the Docker Engine, a project with no
    containers): read-only phases report it and go on, where a misconfiguration stops them."""
