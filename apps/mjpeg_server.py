"""A tiny MJPEG-over-HTTP server for headless boxes: open http://HOST:PORT/ in a browser.

Routes: ``/`` (a page showing the stream), ``/stream.mjpg`` (multipart/x-mixed-replace),
``/snapshot.jpg`` (the latest frame), ``/stats`` (the latest per-frame record as JSON).
Binds 127.0.0.1 by default; pass host="0.0.0.0" to expose it on the network (e.g. over an SSH-less
LAN to a Jetson), which anyone on that network can then watch.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tdfusion_edge.errors import TDFusionError

log = logging.getLogger(__name__)

# What a viewer that closes its tab, loses its network or hangs up mid-request raises on our side.
_HANGUP = (ConnectionError, TimeoutError)

BOUNDARY = "tdfusionframe"
_PAGE = b"""<!doctype html><html><head><title>tdfusion-edge live</title></head>
<body style="margin:0;background:#111;color:#ddd;font-family:sans-serif">
<img src="/stream.mjpg" style="max-width:100%;display:block;margin:auto">
</body></html>"""


class _QuietHTTPServer(ThreadingHTTPServer):
    """Logs a client's failure in one line (hang-ups at debug level) instead of printing a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _HANGUP):
            log.debug("mjpeg client %s hung up: %s", client_address[0], exc)
        else:
            log.warning("mjpeg client %s: %s: %s", client_address[0], type(exc).__name__, exc)
            log.debug("mjpeg client error", exc_info=exc)


class MjpegServer:
    """Serves the latest published JPEG to any number of clients; publishing never blocks."""

    def __init__(self, port: int = 8080, host: str = "127.0.0.1"):
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._record: dict = {}
        self._closed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # keep the terminal for the app's own output
                log.debug("mjpeg %s: " + fmt, self.address_string(), *args)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html", _PAGE)
                elif path == "/snapshot.jpg":
                    jpeg = server.wait_frame(0, timeout=5.0)[0]
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif path == "/stats":
                    self._send(200, "application/json", json.dumps(server._record).encode())
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache, private")
                self.send_header("Pragma", "no-cache")
                self.end_headers()
                seq = 0
                try:
                    while True:
                        jpeg, seq = server.wait_frame(seq, timeout=1.0)
                        if server.closed:
                            return
                        if jpeg is None:
                            continue
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                        self.wfile.write(jpeg)
                        self.wfile.write(b"\r\n")
                except _HANGUP:
                    return  # the viewer went away

        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise TDFusionError(f"MJPEG port must be a whole number in 1..65535 (0: any free port), got {port!r}")
        try:
            self.httpd = _QuietHTTPServer((host, port), Handler)
        except OSError as exc:  # port in use, no permission (< 1024), unknown host
            raise TDFusionError(f"cannot serve MJPEG on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mjpeg-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, jpeg: bytes, record: dict | None = None) -> None:
        """Make ``jpeg`` the current frame and wake the clients."""
        with self._cond:
            self._jpeg = jpeg
            self._seq += 1
            if record is not None:
                self._record = record
            self._cond.notify_all()

    def wait_frame(self, after_seq: int, timeout: float) -> tuple[bytes | None, int]:
        """The current frame once it is newer than ``after_seq`` (or None after ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._closed, timeout)
            if self._seq > after_seq:
                return self._jpeg, self._seq
            return None, after_seq

    def close(self) -> None:
        """Stop serving; streaming clients see the connection end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(2.0)
