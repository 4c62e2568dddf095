"""An ASGI app on uvicorn in this process: ``Server(app, host, port, limits)``; ``start()`` / ``stop()`` runs it
in a thread (tests, benchmarks), ``run_until_stopped`` until SIGINT or SIGTERM (``biglm serve``, ``biglm
annotate``). The socket is bound here first, so a taken port is a one-line error and port 0 has its number.
One process, one event loop: the model belongs to the scheduler's one worker thread."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from biglm.errors import BiglmError
from biglm.serve.limits import Limits, uvicorn_config


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``SO_REUSEADDR``: a restart takes the port back at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise BiglmError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


class Server:
    """``app`` served by uvicorn on ``host:port`` under ``limits`` (default: the app's, ``app.state.limits``, which
    its own middleware enforces; see the module docstring)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None) -> None:
        self.host = host
        self.limits = limits or getattr(getattr(app, "state", None), "limits", None) or Limits()
        self.sock = listen(host, port)
        self.port = self.sock.getsockname()[1]
        self.uvicorn: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        if app is not None:
            self.set_app(app)

    def set_app(self, app: Any) -> None:
        """The app to serve (given later when the port is taken before the model loads)."""
        self.uvicorn = uvicorn.Server(uvicorn_config(app, self.limits))

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        """Serve in a thread; return once it accepts connections."""
        assert self.uvicorn is not None, "set_app first"
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                       name="biglm-http", daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            self.thread.join(0.02)
            timeout -= 0.02
            if not self.thread.is_alive() or timeout <= 0:
                raise BiglmError(f"the server at {self.url} did not start")
        return self

    def stop(self) -> None:
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.sock.close()

    def run_until_stopped(self, banner: Callable[[str], str]) -> int:
        """Serve, print ``banner(url)`` to stderr, until SIGINT or SIGTERM. The handlers are set here (not by
        uvicorn) because a process started in the background inherits SIGINT ignored, and both must stop it
        with status 0."""
        stop = threading.Event()
        handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            print(banner(self.url), file=sys.stderr, flush=True)
            while not stop.wait(0.2) and self.thread is not None and self.thread.is_alive():
                pass
        finally:
            self.stop()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 0


__all__ = ["Server", "listen"]
