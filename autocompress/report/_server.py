"""Serve one run directory over HTTP (the report, its engines and sidecars), and nothing else.

Requests whose path holds a ``..`` segment (plain or percent-encoded), a backslash or a
NUL byte are refused with 403; so is any path that resolves, through symlinks, outside
the run directory. Directory listings are not served.
"""

from __future__ import annotations

import os
import urllib.parse
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autocompress.errors import UserError

__all__ = ["RunDirHandler", "make_server"]


class RunDirHandler(SimpleHTTPRequestHandler):
    """A static file handler confined to ``directory``; ``/`` redirects to the report."""

    def __init__(self, *args, directory: str, **kwargs) -> None:
        self.root = Path(directory).resolve()
        super().__init__(*args, directory=str(self.root), **kwargs)

    def _refusal(self) -> HTTPStatus | None:
        raw = urllib.parse.urlsplit(self.path).path
        decoded = raw
        for _ in range(3):  # doubly encoded %252e%252e decodes to %2e%2e, then to ..
            decoded = urllib.parse.unquote(decoded)
        if "\x00" in decoded or "\\" in decoded or any(part == ".." for part in decoded.split("/")):
            return HTTPStatus.FORBIDDEN
        target = Path(self.translate_path(self.path))
        try:
            resolved = target.resolve()
        except (OSError, RuntimeError):
            return HTTPStatus.NOT_FOUND
        if resolved != self.root and self.root not in resolved.parents:
            return HTTPStatus.FORBIDDEN
        return None

    def send_head(self):
        if urllib.parse.urlsplit(self.path).path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/report.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        refusal = self._refusal()
        if refusal is not None:
            self.send_error(refusal)
            return None
        return super().send_head()

    def list_directory(self, path):  # noqa: ARG002 - listings are never served
        self.send_error(HTTPStatus.NOT_FOUND)
        return None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if os.environ.get("AUTOCOMPRESS_SERVE_LOG"):
            super().log_message(format, *args)


def make_server(run_dir: Path | str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for ``run_dir`` bound to ``host:port`` (port 0 picks a free one); call
    ``serve_forever()`` on it, ``shutdown()`` from another thread to stop."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} is not a folder; give a run directory (see `autocompress runs list`).")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, but got {port}.")
    try:
        return ThreadingHTTPServer((host, port), partial(RunDirHandler, directory=str(run_dir)))
    except OSError as exc:
        raise UserError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host.") from None
