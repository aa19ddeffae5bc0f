"""A minimal Redis client (RESP2 over one socket), for services that may use only the standard library."""

import socket
import threading


class RedisError(Exception):
    """An error reply of the server."""


class Redis:
    """One connection, shared by threads under a lock; connects (AUTH, SELECT) on first use."""

    def __init__(self, host, port, password=None, db=0, timeout=5):
        self.address = (host, int(port))
        self.password = password
        self.db = int(db)
        self.timeout = timeout
        # Re-entrant: transaction() holds it around its own execute() calls.
        self._lock = threading.RLock()
        self._sock = None
        self._reader = None

    def execute(self, *args):
        """Send one command; returns its reply (str, int, list or None), raises RedisError on an error reply."""
        reply = self.pipeline([args])[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def pipeline(self, commands):
        """Send several commands in one write and read all their replies; error replies come back as RedisError values."""
        payload = b"".join(_encode(command) for command in commands)
        with self._lock:
            try:
                return self._roundtrip(payload, len(commands))
            except _StaleConnection:
                # The server closed an idle connection (or restarted): reconnect once and resend.
                self.close()
                return self._roundtrip(payload, len(commands))

    def transaction(self, build, *keys):
        """Optimistic transaction: WATCH `keys`, `build()` reads and returns (commands, result), MULTI/EXEC the
        commands, and start over when a watched key changed meanwhile; returns the last `result`."""
        with self._lock:
            while True:
                self.execute("WATCH", *keys)
                try:
                    commands, result = build()
                except BaseException:
                    self.execute("UNWATCH")
                    raise
                if not commands:
                    self.execute("UNWATCH")
                    return result
                replies = self.pipeline([("MULTI",), *commands, ("EXEC",)])
                errors = [reply for reply in replies if isinstance(reply, RedisError)]
                if errors:
                    raise errors[0]
                if replies[-1] is not None:
                    return result

    def close(self):
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock = self._reader = None

    def _roundtrip(self, payload, count):
        fresh = self._sock is None
        if fresh:
            self._connect()
        try:
            self._sock.sendall(payload)
            return [self._read() for _ in range(count)]
        except (BrokenPipeError, ConnectionResetError, EOFError) as error:
            self.close()
            if fresh:
                raise ConnectionError(f"Redis at {self.address[0]}:{self.address[1]} closed the connection") from error
            raise _StaleConnection from error
        except OSError:
            self.close()  # a timeout leaves replies unread: never reuse that connection
            raise

    def _connect(self):
        try:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
        except OSError as error:
            raise ConnectionError(f"cannot connect to Redis at {self.address[0]}:{self.address[1]}: {error}") from error
        self._reader = self._sock.makefile("rb")
        setup = ([("AUTH", self.password)] if self.password else []) + ([("SELECT", self.db)] if self.db else [])
        if setup:
            self._sock.sendall(b"".join(_encode(command) for command in setup))
            for _ in setup:
                if isinstance(reply := self._read(), RedisError):
                    self.close()
                    raise reply

    def _read(self):
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise EOFError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._reader.read(size + 2)
            if len(data) != size + 2:
                raise EOFError("connection closed")
            return data[:-2].decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RedisError(f"unexpected reply {line[:40]!r}")


class _StaleConnection(Exception):
    """A connection that worked before broke: worth one reconnection."""


def _encode(command):
    parts = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in command]
    return b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)])
