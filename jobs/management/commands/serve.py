"""`manage.py serve`: the ASGI web server, plus (embedded default) the worker, beat and watchers."""

import contextlib
import logging

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
            uvicorn.run("launcher_site.asgi:application", host=host, port=port, log_level="warning", access_log=False,
                        lifespan="off", workers=workers if not settings.LAUNCHER_EMBEDDED else None,
                        ws_ping_interval=20, ws_ping_timeout=20, timeout_graceful_shutdown=5,
                        # Job updates are small and go to many sockets: compressing each copy per
                        # socket costs more CPU than the bytes are worth.
                        ws_per_message_deflate=False, **proxy_options())
        self.stdout.write("stopped")


def proxy_options() -> dict:
    """X-Forwarded-For/-Proto are believed only from LAUNCHER_TRUSTED_PROXIES. uvicorn's own default
    trusts them from loopback, where anyone on the host (or a proxy passing the header through) could
    set the client address the token and sign-in throttles count by."""
    if not settings.LAUNCHER_TRUSTED_PROXIES:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": list(settings.LAUNCHER_TRUSTED_PROXIES)}
