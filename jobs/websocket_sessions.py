"""The Django session of a websocket, loaded and never saved.

Channels' SessionMiddleware (in AuthMiddlewareStack) wraps every outgoing message to save the
session when it changed. Our sockets only forward and never change it, and that check on each of
the thousands of messages a second a busy site fans out was about a tenth of the web processes'
CPU (bench/fanout.py with py-spy). This middleware only puts the session store in the scope, for
Channels' AuthMiddleware to find the user.
"""

from importlib import import_module

from django.conf import settings


class ReadOnlySessionMiddleware:
    def __init__(self, inner):
        self.inner = inner
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        return await self.inner(dict(scope, session=self.store(key)), receive, send)
