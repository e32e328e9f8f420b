"""URLs of the test project."""

from __future__ import annotations

from django.urls import path

from .views import enqueue_double

urlpatterns = [path("double/<int:x>", enqueue_double)]
