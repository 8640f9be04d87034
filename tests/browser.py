"""Headless chromium for the browser tests: Debian's ``chromium`` driven by Playwright."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest


def require_chromium() -> tuple[Any, str]:
    """``(sync_playwright, chromium path)``; skips the test when either is missing, except under
    CI (``CI`` set), where the browser tests must run and fail instead."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    else:
        if chromium is not None:
            return sync_playwright, chromium
        reason = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)
