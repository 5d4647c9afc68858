"""`manage.py serve`: the ASGI web server, plus (embedded default) the worker, beat and watchers."""

import contextlib
import importlib
import logging
import signal
import threading

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from launcher_site.startup import require_services

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Serve the dashboard and API; with no REDIS_URL also run the worker and watchers in-process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (Redis mode only)")

    def handle(self, *args, host, port, workers, **options):
        require_services()
        with contextlib.ExitStack() as stack:
            if settings.LAUNCHER_EMBEDDED:
                from launcher_site.embedded import embedded_beat, embedded_worker

                stack.enter_context(embedded_worker())
                stack.enter_context(embedded_beat())
            if settings.LAUNCHER_RUN_WATCHERS:
                from jobs.watchers import WatcherPool

                stack.callback(WatcherPool().start().stop)
            self.stdout.write(f"FLARE Launcher on http://{host}:{port}/  (Ctrl-C to stop)")
            uvicorn.run("jobs.management.commands.serve:application", factory=True, host=host, port=port,
                        log_level="warning", access_log=False, lifespan="off",
                        workers=workers if not settings.LAUNCHER_EMBEDDED else None,
                        ws_ping_interval=20, ws_ping_timeout=20, timeout_graceful_shutdown=5,
                        # Job updates are small and go to many sockets: compressing each copy per
                        # socket costs more CPU than the bytes are worth.
                        ws_per_message_deflate=False, **proxy_options())
        self.stdout.write("stopped")


def application():
    """uvicorn's app factory. Each server process (every one of `--workers N`) calls it after uvicorn
    has installed its SIGINT/SIGTERM handler, and chains begin_shutdown in front of that handler: the
    open long polls answer with the job as it is as soon as shutdown begins, instead of being
    cancelled (500) when the graceful period runs out."""
    app = importlib.import_module("launcher_site.asgi").application  # first: it sets Django up
    from jobs.api.wait import begin_shutdown

    chain_shutdown_signals(begin_shutdown)
    return app


def chain_shutdown_signals(begin) -> None:
    """Run `begin()` first, then uvicorn's own handler, on SIGINT and SIGTERM. Only uvicorn's handler
    is wrapped: a single-process `uvicorn.run` also calls the factory once before it installs its
    handlers, and that call must not wrap Python's default handlers (they are restored after)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not isinstance(getattr(previous, "__self__", None), uvicorn.Server):
            continue

        def handler(signum, frame, previous=previous):
            begin()
            previous(signum, frame)

        signal.signal(sig, handler)


def proxy_options() -> dict:
    """X-Forwarded-For/-Proto are believed only from LAUNCHER_TRUSTED_PROXIES. uvicorn's own default
    trusts them from loopback, where anyone on the host (or a proxy passing the header through) could
    set the client address the token and sign-in throttles count by."""
    if not settings.LAUNCHER_TRUSTED_PROXIES:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.LAUNCHER_TRUSTED_PROXIES)}
