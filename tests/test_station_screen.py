"""The operator's screen of `iapas serve` in headless Debian chromium at 1366x768 (issue 20):
parts posted by another client through the REST API appear live and in order, the layout holds,
a picture that answers late is never painted over a later part, a broken upload says NOT JUDGED,
a stopped station says OFFLINE, a reload keeps the product, names survive a restart."""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.product.decision import Decision
from iapas.product.profile import Profile
from tests.browser import require_chromium
from tests.test_serve_browser import start_serve

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

WIDTH, HEIGHT = 1366, 768
SHOTS = os.environ.get("IAPAS_SCREENSHOT_DIR")
PAGE_ERRORS: list[str] = []  # uncaught errors of the page's script, over the whole module


def png(seed: int, size: tuple[int, int] = (48, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Station:
    """`iapas serve` with a bottle (threshold 0.05) and a screw (every part NG) on a fixed port,
    storing into one folder, so that it can be stopped and started again at the same URL."""

    def __init__(self, tiny_models: dict[str, Path], folder: Path) -> None:
        bottle = Profile.from_prompts("bottle", "bottle", ["scratch", "crack"])
        bottle.decision = Decision(threshold=0.05, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
        screw = Profile.from_prompts("screw", "screw", ["scratch"], size_threshold=1000.0)  # no box too large: every part NG
        screw.decision = Decision(threshold=0.0, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
        self.args = ["--profile", str(bottle.save(folder / "bottle.yaml")), "--profile", str(screw.save(folder / "screw.yaml")),
                     "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]),
                     "--device", "cpu", "--store", str(folder / "station")]
        self.folder, self.port, self.proc, self.url = folder, free_port(), None, ""

    def start(self) -> None:
        self.proc, self.url = start_serve(self.args, self.folder / f"serve-{time.monotonic_ns()}.log", port=self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def post(self, seed: int, part_id: str, category: str = "bottle", size: tuple[int, int] = (48, 64)) -> dict:
        response = httpx.post(self.url + "/v1/inspect", files={"file": (f"cam-{seed}.png", png(seed, size), "image/png")},
                              data={"category": category, "part_id": part_id}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def station(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    st = Station(tiny_models, tmp_path_factory.mktemp("station-screen"))
    st.start()
    yield st
    if st.proc.poll() is None:
        st.stop()


@pytest.fixture(scope="module")
def page(station: Station):
    sync_playwright, chromium = require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.on("pageerror", lambda error: PAGE_ERRORS.append(str(error)))
            page.goto(station.url + "/")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30_000)
            yield page
        finally:
            browser.close()


def history_ids(page) -> list[str]:
    return page.eval_on_selector_all("#history button", "bs => bs.map(b => b.dataset.id)")


def wait_shown(page, part_id: str, timeout: int = 15_000) -> None:
    page.wait_for_function("p => document.getElementById('verdict-part').textContent.includes('part ' + p + ' ')",
                           arg=part_id, timeout=timeout)


def panel_in_view(page) -> bool:
    box = page.eval_on_selector("#verdict-box", "e => { const r = e.getBoundingClientRect();"
                                " return [r.left, r.top, r.right, r.bottom]; }")
    return box[0] >= 0 and box[1] >= 0 and box[2] <= WIDTH and box[3] <= HEIGHT


def test_thirty_parts_posted_by_another_client_appear_live_in_order_and_the_layout_holds(station: Station, page):
    assert page.inner_text("#verdict") == "READY"  # nothing judged on screen before a part comes
    posted = []
    for i in range(30):
        posted.append(station.post(i, f"P{i:02d}")["id"])
        if i == 0:  # live: the first part is on screen within a second or so, named
            wait_shown(page, "P00", timeout=3_000)
    page.wait_for_function("document.querySelectorAll('#history li').length === 30", timeout=10_000)
    assert history_ids(page) == posted[::-1]  # newest first, all of them
    wait_shown(page, "P29")  # following the newest
    last = httpx.get(station.url + f"/v1/results?part_id=P29").json()["results"][0]
    assert page.inner_text("#verdict") == last["decision"]
    assert "product bottle" in page.inner_text("#verdict-part")
    page.wait_for_function("(id) => { const i = document.getElementById('overlay');"
                           " return i.dataset.part === id && i.complete && i.naturalWidth === 64; }", arg=posted[-1])
    assert page.evaluate("document.documentElement.scrollWidth") == WIDTH
    assert page.evaluate("document.documentElement.scrollHeight") == HEIGHT
    assert panel_in_view(page)
    strip = page.eval_on_selector("#history", "h => [h.scrollWidth, h.clientWidth]")
    assert strip[0] > strip[1]  # the history scrolls inside itself
    picture = page.eval_on_selector("#overlay", "i => { const r = i.getBoundingClientRect(); return [r.right, r.bottom]; }")
    assert picture[0] <= WIDTH and picture[1] <= HEIGHT
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "station-30-parts.png"))
    ok = httpx.get(station.url + "/v1/results?decision=OK&limit=1").json()["total"]
    page.wait_for_function("n => document.getElementById('shift-ok').textContent === String(n)", arg=ok)
    assert page.inner_text("#shift-ng") == str(30 - ok) and page.inner_text("#shift-rate") == f"{100 * (30 - ok) / 30:.1f} %"
    page.click("#shift-reset")  # a new shift: counted from now, by the station
    page.wait_for_function("document.getElementById('shift-ok').textContent === '0'"
                           " && document.getElementById('shift-ng').textContent === '0'")
    page.keyboard.press("m")  # the map, in colour with its bar (wider than the part), by its key
    page.wait_for_function("(() => { const i = document.getElementById('overlay');"
                           " return i.alt.startsWith('map of P29') && i.complete && i.naturalWidth > 64; })()")
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "station-map.png"))
    page.keyboard.press("o")
    page.wait_for_function("document.getElementById('overlay').alt.startsWith('overlay of P29')")


def test_a_picture_that_answers_late_is_never_painted_over_a_later_part(station: Station, page):
    held = []
    page.route("**/overlay.png", lambda route: held.append(route) if not held else route.continue_())
    try:
        early = station.post(100, "LATE", size=(48, 64))
        wait_shown(page, "LATE")
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert held and held[0].request.url.endswith(f"/{early['id']}/overlay.png")
        later = station.post(101, "NEXT", size=(40, 96))
        wait_shown(page, "NEXT")
        page.wait_for_function("(id) => { const i = document.getElementById('overlay');"
                               " return i.dataset.part === id && i.complete && i.naturalWidth === 96; }", arg=later["id"])
        with page.expect_response(lambda r: r.url.endswith(f"/{early['id']}/overlay.png")):
            held[0].continue_()  # the early part's picture answers now
        page.wait_for_timeout(500)
        assert page.eval_on_selector("#overlay", "i => [i.dataset.part, i.naturalWidth]") == [later["id"], 96]
        assert "part NEXT " in page.inner_text("#verdict-part")
    finally:
        page.unroute("**/overlay.png")


def test_a_broken_upload_shows_not_judged_with_the_reason(page):
    page.set_input_files("#files", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\nnot a png"}])
    page.wait_for_function("document.getElementById('verdict').textContent === 'NOT JUDGED'", timeout=15_000)
    assert "broken.png" in page.inner_text("#verdict-reason")
    assert page.get_attribute("#overlay", "src") is None  # no other part's picture under it


def test_a_part_in_flight_from_another_client_shows_inspecting_then_not_judged_when_it_fails(station: Station, page):
    with socket.create_connection(("127.0.0.1", station.port)) as sock:  # an upload that is still coming
        sock.sendall(f"POST /v1/inspect?category=bottle&part_id=SLOW HTTP/1.1\r\nHost: 127.0.0.1:{station.port}\r\n"
                     "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n".encode() + png(5)[:500])
        page.wait_for_function("document.getElementById('verdict').textContent === 'INSPECTING'", timeout=3_000)
        assert "in flight" in page.inner_text("#verdict-part") and page.get_attribute("#overlay", "src") is None
    # the sender went away: its part was not judged, and the screen says so instead of an older verdict
    page.wait_for_function("document.getElementById('verdict').textContent === 'NOT JUDGED'", timeout=3_000)
    assert "refused or failed" in page.inner_text("#verdict-reason")


def test_a_reload_keeps_the_product_and_names_it(station: Station, page):
    page.select_option("#category", "screw")
    page.reload()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30_000)
    assert page.eval_on_selector("#category", "s => s.value") == "screw"
    assert page.inner_text("#product-now") == "screw"
    assert "product=screw" in page.url
    station.post(200, "S1", category="screw")
    wait_shown(page, "S1")
    assert page.inner_text("#verdict") == "NG" and "product screw" in page.inner_text("#verdict-part")
    assert "main reason: scratch" in page.inner_text("#verdict-reason") or not httpx.get(
        station.url + "/v1/results?part_id=S1").json()["results"][0]["kept"]  # the top kept phrase, when a box was kept
    page.wait_for_function("Number(document.getElementById('shift-ng').textContent) >= 1")  # counted since the reset


def test_the_layout_holds_with_a_thousand_parts_in_the_history(station: Station, page):
    other = page.context.browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    try:
        other.goto(station.url + "/")
        other.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30_000)
        other.evaluate("""() => { const t = Date.now() - 3600e3;
            for (let i = 0; i < 1000; i++) {
              const id = (t + i).toString(16).padStart(12, '0') + 'f'.repeat(20);
              addItem({id, category: 'bottle', decision: i % 7 ? 'OK' : 'NG', part_id: 'SYN' + i, kept: [], dropped: [],
                       urls: {overlay: '/v1/results/' + id + '/overlay.png'}});
            } }""")
        assert other.evaluate("document.querySelectorAll('#history li').length") >= 1000
        other.click("#history button >> nth=0")
        assert other.evaluate("document.documentElement.scrollWidth") == WIDTH
        assert panel_in_view(other)
        strip = other.eval_on_selector("#history", "h => [h.scrollWidth, h.clientWidth, h.getBoundingClientRect().bottom]")
        assert strip[0] > 50 * strip[1] and strip[2] <= HEIGHT
    finally:
        other.close()


def test_the_whatif_slider_counts_equal_a_recount_of_results_jsonl(station: Station, page):
    import json

    page.select_option("#category", "bottle")
    page.click("#whatif-open")
    page.wait_for_function("document.getElementById('whatif-summary').textContent.includes('calibrated 0.0500')")
    lines = [json.loads(x) for x in (station.folder / "station" / "bottle" / "results.jsonl").read_text().splitlines()]
    scores = sorted(r["decision_score"] for r in lines)
    for target in (scores[0] - 0.5, scores[-1] + 0.5, (scores[len(scores) // 2] + scores[-1]) / 2):
        value = page.eval_on_selector("#whatif-slider", "(s, t) => { s.value = t; s.dispatchEvent(new Event('input'));"
                                      " return s.value; }", target)
        page.wait_for_function("v => document.getElementById('whatif-summary').textContent.startsWith("
                               "'threshold ' + Number(v).toFixed(4) + ':')", arg=value)
        t = float(value)  # the slider's own step
        ng = sum(r["decision_score"] > t for r in lines)
        changed = sum((r["decision_score"] > t) != (r["decision"] == "NG") for r in lines)
        assert [page.inner_text(f"#whatif-{k}") for k in ("ok", "ng", "n-changed")] == [str(len(lines) - ng), str(ng), str(changed)]
        assert page.eval_on_selector_all("#whatif-changed li", "ls => ls.length") == min(changed, 200)
    assert page.evaluate("document.documentElement.scrollWidth") == WIDTH
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "station-engineer-whatif.png"))
    page.click("#whatif-open")
    assert page.is_visible("#viewer") and page.is_hidden("#engineer")


def test_a_stopped_station_shows_offline_within_5_s_and_names_survive_a_restart(station: Station, page):
    station.stop()
    stopped = time.monotonic()
    page.wait_for_function("!document.getElementById('offline').hidden", timeout=5_000)
    assert time.monotonic() - stopped < 5
    assert page.inner_text("#verdict") == "OFFLINE" and page.inner_text("#offline-text").startswith("OFFLINE since ")
    assert page.get_attribute("#overlay", "src") is None
    station.start()  # the same store and port: the page comes back by itself, with nothing judged on screen
    page.wait_for_function("document.getElementById('offline').hidden", timeout=30_000)
    assert page.inner_text("#verdict") == "READY"
    page.reload()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=30_000)
    labels = page.eval_on_selector_all("#history button span", "s => s.map(x => x.textContent)")
    assert labels[0] == "NG S1" and any(label.endswith(" P29") for label in labels)
    page.click("#history button >> nth=0")
    wait_shown(page, "S1")
    assert "part S1 (cam-200.png) · product screw" in page.inner_text("#verdict-part")
    assert PAGE_ERRORS == []


def test_review_of_an_evaluate_folder_lists_its_categories_with_thresholds_and_a_ground_truth_toggle(tmp_path: Path, page):
    from iapas.evaluation import EvalSettings, evaluate_dataset
    from tests.test_eval_decisions import make_tree, score
    from tests.test_evaluation import fake_pipeline, write_profiles

    out = tmp_path / "eval"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full", n_references=2, calibration_images=20, false_alarm_rate=0.2)
    evaluate_dataset("mvtec", make_tree(tmp_path / "data"), out, fake_pipeline(), settings, report=False)
    proc, url = start_serve(["--review", str(out)], tmp_path / "review.log")
    review = page.context.browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})  # one Playwright per process
    try:
        review.goto(url + "/")
        review.wait_for_function("document.getElementById('status').textContent.endsWith('in this run')", timeout=30_000)
        options = review.eval_on_selector_all("#category option", "os => os.map(o => o.textContent)")
        assert options == [f"alpha (threshold {score(165):.4f})"]  # not alpha.calibration, not "(no threshold)"
        ng = sum(r["decision"] == "NG" for r in httpx.get(url + "/v1/results?limit=1000").json()["results"])
        assert review.inner_text("#counts") == f"9 part(s), {ng} NG"
        first = review.eval_on_selector_all("#history button", "bs => bs.map(b => b.dataset.id)")[0]
        review.click(f"#history button[data-id='{first}']")
        assert review.locator(".toggles button[data-kind='gt']").is_visible()
        review.keyboard.press("g")
        review.wait_for_function("(() => { const i = document.getElementById('overlay');"
                                 " return i.alt.startsWith('gt of') && i.complete && i.naturalWidth === 400; })()")
        assert review.evaluate("document.documentElement.scrollWidth") == WIDTH
    finally:
        review.close()
        proc.terminate()
        proc.wait(30)
