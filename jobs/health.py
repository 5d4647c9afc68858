"""GET /healthz: 200 when the database and the channel layer answer, else 503 naming the part."""

import asyncio
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request):
    status = {"database": _database(), "channel_layer": _channel_layer()}
    ok = all(v == "ok" for v in status.values())
    failing = [name for name, v in status.items() if v != "ok"]
    body = {"status": "ok" if ok else f"failing: {', '.join(failing)}", **status}
    return JsonResponse(body, status=200 if ok else 503)


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _channel_layer() -> str:
    layer = get_channel_layer()
    if layer is None:
        return "error: no channel layer configured"

    async def probe():
        await asyncio.wait_for(layer.group_send(f"healthz.{uuid.uuid4().hex}", {"type": "noop"}), timeout=3)

    try:
        async_to_sync(probe)()
        return "ok"
    except Exception as exc:
        return f"error: {exc or type(exc).__name__}"
