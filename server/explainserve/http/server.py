"""The HTTP/JSON server beside gRPC (`http_port`): uvicorn, on a thread and event loop of its
own, serving the app of `explainserve.http.app` on the gRPC server's servicers, serving state,
bearer tokens, TLS files, body bound and metrics.

Started by `start_http` as a companion of the gRPC server (`explainserve.grpc.server`): its
calls count in the same serving state, so a drain on SIGTERM waits for HTTP calls as for gRPC
ones (and new HTTP work is refused with 503 once draining); `close`, once the drain is over,
cancels what still runs and stops the server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading

import uvicorn

from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer
from explainserve.http.app import build_app, operations
from explainserve.http.calls import Calls

log = logging.getLogger(__name__)

#: Seconds uvicorn waits for connections to finish once told to stop (the drain has waited for
#: the calls already; this bounds idle keep-alive connections and replies being written).
_STOP_SECONDS = 5.0


class HttpServer:
    """A running HTTP server (see the module doc)."""

    def __init__(self, running: RunningServer, options: ServerOptions) -> None:
        if running.explain_servicer is None or running.oip_servicer is None:
            raise ValueError("the HTTP server needs a gRPC server with an explainer")
        assert running.interceptor is not None
        self.calls = Calls(
            running.state,
            running.interceptor.ledger,
            options.auth_tokens,
            options.max_message_bytes,
            options.max_concurrent_rpcs,
        )
        #: The ASGI app served.
        self.app = build_app(
            operations(running.explain_servicer, running.oip_servicer, self.calls), self.calls
        )
        self._socket = _bind(options.host, options.http_port or 0)
        self.port: int = self._socket.getsockname()[1]
        tls = options.tls_cert is not None
        # uvicorn's start and stop lines ("Press CTRL+C to quit") are not ours to print.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            ssl_certfile=str(options.tls_cert) if tls else None,
            ssl_keyfile=str(options.tls_key) if tls else None,
            ssl_ca_certs=str(options.tls_client_ca) if options.tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if options.tls_client_ca else ssl.CERT_NONE,
            timeout_graceful_shutdown=int(_STOP_SECONDS),
        )
        #: The line `serve_forever` prints once serving.
        self.announcement = f"explainserve http on {options.host}:{self.port}" + (
            " (TLS)" if tls else ""
        )
        self._server = uvicorn.Server(config)
        self._started = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failed is not None:
            self.calls.close()
            raise self._failed

    def _run(self) -> None:
        async def serve() -> None:
            config = self._server.config
            try:
                if not config.loaded:
                    config.load()  # reads the TLS files: a mistake is reported at start
                self._server.lifespan = config.lifespan_class(config)
                await self._server.startup(sockets=[self._socket])
            except BaseException as e:
                self._failed = e
                self._started.set()
                return
            self._started.set()
            await self._server.main_loop()
            await self._server.shutdown(sockets=[self._socket])

        asyncio.run(serve())

    def close(self) -> None:
        """Cancels the calls still running (their work stops before the next batch), stops
        taking connections and waits for the server's thread."""
        self.calls.cancel_all()
        self._server.should_exit = True
        self._thread.join(_STOP_SECONDS + 5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        self.calls.close()


def start_http(running: RunningServer) -> HttpServer:
    """Starts the HTTP server on `running`'s options (`http_port`), a companion of the gRPC
    server: `start(..., companions=[start_http])`."""
    assert running.options is not None
    server = HttpServer(running, running.options)
    log.info("HTTP bound %s:%d", running.options.host, server.port)
    return server


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (0: a free port); OSError says why not, "address
    in use" for a busy port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on the connections only when the socket says
    # it is TCP, and without it a reply's header and body segments wait for the client's
    # delayed ACK (about 40 ms a call).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # A port in TIME_WAIT after a restart can be bound again (two listeners still cannot).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = (
            "address in use (another server listens on this port)"
            if e.errno == errno.EADDRINUSE
            else e.strerror or str(e)
        )
        raise OSError(f"could not bind the HTTP port {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock
