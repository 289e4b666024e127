"""The same app as a Django Channels project serves it under daphne: a `ProtocolTypeRouter`
whose "http" entry is Django's own handler, websockets routed apart (none here)."""

from __future__ import annotations

from channels.routing import ProtocolTypeRouter, URLRouter

from .asgi import application as django_application

application = ProtocolTypeRouter({"http": django_application, "websocket": URLRouter([])})
