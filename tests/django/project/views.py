"""An async view that enqueues."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .tasks import double


async def enqueue_double(request: HttpRequest, x: int) -> JsonResponse:
    result = await double.aenqueue(x)
    return JsonResponse({"id": result.id, "status": str(result.status)})
