"""The placement page (`/ui`): a static page that reads the admin API only.

Owns the page's files and the routes that serve them; imports nothing of the scheduler but FastAPI.
"""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Serve the placement page on `app` (filled in by the page's own change)."""
