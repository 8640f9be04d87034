"""The station page in a real browser: `iapas serve` in a subprocess with the tiny models, a real
MVTec image uploaded through the page in headless Debian chromium (driven by playwright)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iapas.product.decision import Decision
from iapas.product.profile import Profile
from tests.conftest import SHARED_DATA
from tests.browser import require_chromium

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def part_image(tmp_path: Path) -> Path:
    """A real MVTec bottle (900x900) from ../shared/data; where that folder is absent (a fresh
    CI clone) a generated 900x900 image instead, so that the browser test still runs."""
    folder = SHARED_DATA / "MVTecAD" / "bottle" / "test" / "broken_large"
    if folder.is_dir():
        return min(folder.glob("*.png"))
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "generated-part.png"
    Image.fromarray(rng.integers(60, 200, (900, 900, 3), dtype=np.uint8)).save(path)
    return path


def start_serve(args: list[str], log: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    """`iapas serve ARGS --port PORT` (a free one by default) in a subprocess; returns it and the URL it printed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "iapas", "serve", *args, "--port", str(port)], stdout=err, stderr=err, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        if found:
            return proc, found.group(0).rstrip("/")
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"iapas serve did not start: {log.read_text()}")


def test_station_page_in_headless_chromium_shows_verdict_score_and_overlay(tiny_models: dict[str, Path], tmp_path: Path):
    sync_playwright, chromium = require_chromium()
    image = part_image(tmp_path)
    profile = Profile.from_prompts("bottle", "bottle", ["scratch", "crack", "contamination"])
    profile.decision = Decision(threshold=0.05, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
    profile_file = profile.save(tmp_path / "bottle.yaml")
    # a second product whose every part is NG, for the review's product filter below
    screw = Profile.from_prompts("screw", "screw", ["scratch"], size_threshold=1000.0)  # no box too large: every part NG
    screw.decision = Decision(threshold=0.0, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
    screw_file = screw.save(tmp_path / "screw.yaml")
    proc, url = start_serve(["--profile", str(profile_file), "--profile", str(screw_file), "--detector", str(tiny_models["grounding-dino"]),
                             "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--store", str(tmp_path / "station")],
                            tmp_path / "serve.log")
    shot = tmp_path / "station.png"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                requests: list[str] = []
                page.on("request", lambda r: requests.append(r.url))
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30_000)
                assert page.eval_on_selector("#category", "s => s.value") == "bottle"
                page.set_input_files("#files", str(image))
                page.wait_for_function("document.querySelectorAll('#history li').length === 1", timeout=120_000)
                page.wait_for_function("(() => { const i = document.getElementById('overlay');"
                                       " return i.complete && i.naturalWidth > 0; })()", timeout=30_000)
                verdict = page.inner_text("#verdict")
                assert verdict in ("OK", "NG")
                assert page.get_attribute("#verdict", "class") == verdict
                score = page.inner_text("#score")
                assert re.fullmatch(r"score \d+\.\d{4} / threshold 0\.0500", score), score
                assert page.eval_on_selector("#overlay", "i => i.naturalWidth") == 900  # the MVTec bottle is 900x900
                # the thumbnail and the big picture share one fetch: the server renders the overlay once
                assert sum(u.endswith("/overlay.png") for u in requests) == 1, requests
                timings = page.eval_on_selector_all("#timings tr td:first-child", "cells => cells.map(c => c.textContent)")
                assert {"detection", "segmentation", "total"} <= set(timings)
                page.focus("#files")  # keyboard: the file input, then the picture toggles, are reachable
                page.keyboard.press("Tab")
                page.click(".toggles button[data-kind='map']")
                page.wait_for_function("document.getElementById('overlay').alt.startsWith('map')", timeout=10_000)
                page.click(".toggles button[data-kind='overlay']")
                page.wait_for_function("(() => { const i = document.getElementById('overlay');"
                                       " return i.alt.startsWith('overlay') && i.complete && i.naturalWidth > 0; })()")
                page.check("#ng-only")
                hidden = page.eval_on_selector("#history li", "li => li.hidden")
                assert hidden == (verdict == "OK")
                page.uncheck("#ng-only")
                page.screenshot(path=str(shot))
                assert all(u.startswith(url) or u.startswith("blob:") for u in requests)  # nothing from elsewhere
                page.select_option("#category", "screw")
                page.set_input_files("#files", str(image))
                page.wait_for_function("document.querySelectorAll('#history li').length === 2", timeout=120_000)
                assert page.inner_text("#verdict") == "NG"
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    assert shot.stat().st_size > 10_000
    assert len(list((tmp_path / "station" / "bottle" / "overlays").glob("*.png"))) == 1
    # the same page over the store folder, read-only: the part, its verdict, the overlay
    proc, url = start_serve(["--review", str(tmp_path / "station")], tmp_path / "review.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('status').textContent.endsWith('in this run')", timeout=30_000)
                assert page.inner_text("#mode-label") == "review (read-only)"
                assert page.is_hidden("#upload-controls")
                assert page.inner_text("#verdict") == verdict and page.inner_text("#score") == score
                # the product chosen is bottle: the (NG) screw part stays hidden, "NG only" or not
                shown = ("[...document.querySelectorAll('#history li')].map(li =>"
                         " [state.items.find(i => i.id === li.firstChild.dataset.id).category, li.hidden])")
                assert sorted(page.evaluate(shown)) == [["bottle", False], ["screw", True]]
                page.check("#ng-only")
                assert sorted(page.evaluate(shown)) == [["bottle", verdict == "OK"], ["screw", True]]
                page.uncheck("#ng-only")
                page.select_option("#category", "screw")
                assert sorted(page.evaluate(shown)) == [["bottle", True], ["screw", False]]
                page.wait_for_function("(() => { const i = document.getElementById('overlay');"
                                       " return i.complete && i.naturalWidth === 900; })()", timeout=30_000)
                page.click(".toggles button[data-kind='mask']")
                page.wait_for_function("(() => { const i = document.getElementById('overlay');"
                                       " return i.alt.startsWith('mask') && i.complete && i.naturalWidth === 900; })()")
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    if os.environ.get("IAPAS_SCREENSHOT_DIR"):  # to look at it
        shutil.copy(shot, Path(os.environ["IAPAS_SCREENSHOT_DIR"]) / "station.png")
