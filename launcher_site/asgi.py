"""ASGI entry point: Django for HTTP, Channels for websockets (session auth, exact Origin checked)."""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launcher_site.settings")
django.setup(set_prefix=False)  # as get_asgi_application() does, before anything touches models

from launcher_site.http import OneHopASGIHandler  # noqa: E402

django_asgi_app = OneHopASGIHandler()

from channels.auth import AuthMiddleware  # noqa: E402
from channels.sessions import CookieMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from jobs.routing import websocket_urlpatterns  # noqa: E402
from jobs.websocket_origin import SameOriginValidator  # noqa: E402
from jobs.websocket_sessions import ReadOnlySessionMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(
            CookieMiddleware(ReadOnlySessionMiddleware(AuthMiddleware(URLRouter(websocket_urlpatterns))))),
    }
)

# Everything loaded by now lives as long as the process: the garbage collector's full passes need
# not walk it again and again.
gc.freeze()
