"""`manage.py watch`: the watchers as their own process (production). Several may run: each site
is watched by whichever process holds its lease."""

import signal
import threading

from django.core.management.base import BaseCommand

from launcher_site.startup import require_services


class Command(BaseCommand):
    help = "Watch every site's backend and record each change (one active watcher per site)."

    def handle(self, *args, **options):
        from jobs.watchers import WatcherPool

        require_services()
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        pool = WatcherPool().start()
        self.stdout.write(f"watching as {pool.owner}")
        done.wait()
        pool.stop()
        from jobs import events

        events.flush(timeout=3)  # let the last state changes reach the channel layer
