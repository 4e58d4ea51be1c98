"""Logging set-up: JSON lines (python-json-logger) or plain text, with secrets redacted.

The redaction filter is a last line of defence: credentials are kept in SecretStr
and never formatted on purpose, but any log record whose text contains a value
registered with `register_secret` (or looks like an AWS secret) is masked.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

from pythonjsonlogger.json import JsonFormatter

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_PATTERNS = [
    re.compile(r"(?i)(secret_access_key|aws_secret_access_key|password|token)([\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"),
]


def register_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)


def redact_text(text: str) -> str:
    for secret in list(_SECRETS):
        if secret in text:
            text = text.replace(secret, "**********")
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}**********", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(*, service: str, level: str = "INFO", json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "aiobotocore", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
