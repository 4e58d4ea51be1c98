"""The controller's back-off: re-exports `meshserve.common.backoff` (its home since the
service skeleton moved there). Pure; kept only so the existing importers keep working."""

from __future__ import annotations

from meshserve.common.backoff import backoff_delay

__all__ = ["backoff_delay"]
