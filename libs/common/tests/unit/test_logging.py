from __future__ import annotations

import logging

import pytest

from meshserve.common.logging import RedactingFilter, redact_text, register_secret


def test_registered_secrets_and_key_value_pairs_are_masked() -> None:
    register_secret("s3cr3t-value-123")
    text = redact_text("connecting with s3cr3t-value-123 and secret_access_key=abcd1234 password: hunter2")
    assert "s3cr3t-value-123" not in text and "abcd1234" not in text and "hunter2" not in text
    assert text.count("**********") == 3


def test_filter_rewrites_records(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("another-secret-xyz")
    logger = logging.getLogger("meshserve.test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="meshserve.test.redact"):
        logger.info("key is %s", "another-secret-xyz")
    assert "another-secret-xyz" not in caplog.text
