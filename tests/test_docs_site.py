"""The documentation site builds (``mkdocs build --strict``) and renders in a real browser.

Needs the ``docs`` extra (mkdocs) and Debian's chromium driven by playwright; skips without
them, except under CI, where it fails (as the other browser tests do).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import require_chromium

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must build the docs: pip install -e '.[docs]'")
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_has_every_page_and_the_generated_references(site: Path):
    for page in ("index.html", "tutorials/first-inspection.html", "reference/cli.html", "reference/python-api.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli.html").read_text(encoding="utf-8")
    for command in ("iapas segment", "iapas calibrate", "iapas testing make-tiny-models", "--false-alarm-rate"):
        assert command in cli, command  # generated from the typer app
    api = (site / "reference/python-api.html").read_text(encoding="utf-8")
    assert 'id="iapas.pipeline.Pipeline"' in api and 'id="iapas.product.decision.conformal_threshold"' in api


def test_the_index_and_a_tutorial_render_in_headless_chromium(site: Path):
    sync_playwright, chromium = require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto((site / "index.html").as_uri())
            assert page.title().startswith("iapas")
            nav = page.locator("nav.md-nav--primary")
            assert nav.get_by_text("First inspection with the tiny models").count() >= 1
            assert nav.get_by_text("Command line (generated)").count() >= 1
            assert page.locator("pre code").first.is_visible()
            assert "iapas demo --tiny" in page.locator("pre code").first.inner_text()

            page.goto((site / "tutorials" / "first-inspection.html").as_uri())
            assert "first inspection" in page.title().lower()
            assert page.locator("h1").first.inner_text().startswith("A first inspection")
            code = "\n".join(page.locator("pre code").all_inner_texts())
            assert "iapas calibrate --profile tile.yaml" in code and "from iapas import Pipeline" in code
            assert page.locator("pre code").nth(2).is_visible()
        finally:
            browser.close()
