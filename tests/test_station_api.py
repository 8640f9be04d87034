"""The station's part names and live history over the REST API (issue 20): ``part_id`` checked
where it comes in, stored with the file name, timings and batch size in results.jsonl so that
they survive a restart, searchable; ``?after=`` for a page that polls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from iapas.serve.parts import clean_filename, part_id_problem  # noqa: E402
from tests.test_serve_api import inspect, pipeline, png, station  # noqa: E402,F401


@pytest.mark.parametrize("value", ["", "../etc/passwd", "a/../b", "/abs", ".hidden", "a b", "x" * 65, "a\nb", "ä"])
def test_a_bad_part_id_is_refused(value: str):
    assert part_id_problem(value) is not None


@pytest.mark.parametrize("value", ["A1", "lot-7/part.0042", "SN:00017", "x" * 64])
def test_a_part_id_from_the_line_is_accepted(value: str):
    assert part_id_problem(value) is None


def test_file_names_lose_their_folders_and_control_characters():
    assert clean_filename("C:\\cam\\part 1.png") == "part 1.png"
    assert clean_filename("../../x\x00y.png") == "xy.png"
    assert clean_filename("///") == "upload"


def test_part_id_and_file_name_are_stored_searchable_and_survive_a_restart(pipeline, tmp_path: Path):  # noqa: F811
    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        bad = client.post("/v1/inspect", files={"file": ("a.png", png(1), "image/png")},
                          data={"category": "bottle", "part_id": "../../x"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("part_id '../../x' is not a part id")
        first = client.post("/v1/inspect", files={"file": ("cam1/left.png", png(1), "image/png")},
                            data={"category": "bottle", "part_id": "SN-001"}).json()
        raw = client.post("/v1/inspect?category=bottle&part_id=SN-002&filename=right.png", content=png(2),
                          headers={"Content-Type": "image/png"}).json()
        assert (first["part_id"], first["filename"]) == ("SN-001", "left.png")
        assert (raw["part_id"], raw["filename"]) == ("SN-002", "right.png")
    lines = [json.loads(line) for line in (store / "bottle" / "results.jsonl").read_text().splitlines()]
    assert [(r["part_id"], r["filename"], r["batch_size"]) for r in lines] == [("SN-001", "left.png", 1), ("SN-002", "right.png", 1)]
    assert {"decode", "queue", "detection"} <= set(lines[0]["timings_ms"])
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        listed = client.get("/v1/results").json()["results"]
        assert [(r["id"], r["part_id"], r["filename"]) for r in listed] == [
            (raw["id"], "SN-002", "right.png"), (first["id"], "SN-001", "left.png")]
        assert listed[1]["timings_ms"]["detection"] == first["timings_ms"]["detection"]
        found = client.get("/v1/results", params={"part_id": "SN-001"}).json()
        assert found["total"] == 1 and found["results"][0]["id"] == first["id"]


def test_after_lists_the_later_results_oldest_first(pipeline):  # noqa: F811
    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        ids = [inspect(client, png(i), name=f"p{i}.png").json()["id"] for i in range(3)]
        assert [r["id"] for r in client.get("/v1/results", params={"after": ids[0]}).json()["results"]] == ids[1:]
        assert [r["id"] for r in client.get("/v1/results", params={"after": "0"}).json()["results"]] == ids
        assert client.get("/v1/results", params={"after": ids[2]}).json() == {"total": 0, "results": [], "in_flight": 0}
        bad = client.get("/v1/results", params={"after": "../x"})
        assert bad.status_code == 422 and "after must be" in bad.json()["detail"]


def test_review_of_a_calibrated_evaluate_folder_lists_its_categories_with_their_thresholds(tmp_path: Path):
    """Not ``alpha.calibration`` (the calibration images' predictions) as a product, and the
    threshold the records were judged against, not "no threshold"."""
    from iapas.evaluation import EvalSettings, evaluate_dataset
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewStore
    from iapas.serve.server import BackgroundServer
    from tests.test_eval_decisions import make_tree, score
    from tests.test_evaluation import fake_pipeline, write_profiles

    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full", n_references=2, calibration_images=20, false_alarm_rate=0.2)
    evaluate_dataset("mvtec", make_tree(tmp_path / "data"), out, fake_pipeline(), settings, report=False)
    assert (out / "predictions" / "alpha.calibration.jsonl").is_file()
    with BackgroundServer(create_app(ReviewStore(out), {}, None)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/profiles").json()["profiles"] == [{"category": "alpha", "decision": {"threshold": score(165)}}]
        listed = client.get("/v1/results?limit=1000").json()["results"]
        assert len(listed) == 9 and {r["category"] for r in listed} == {"alpha"}  # the 9 test images only
        assert client.get("/v1/health").json()["categories"] == ["alpha"]


def test_whatif_counts_equal_a_recount_of_results_jsonl(pipeline, tmp_path: Path):  # noqa: F811
    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        for i in range(8):
            inspect(client, png(300 + i, (64, 64)), name=f"w{i}.png")
        lines = [json.loads(line) for line in (store / "bottle" / "results.jsonl").read_text().splitlines()]
        scores = sorted(r["decision_score"] for r in lines)
        at_stored = client.get("/v1/whatif", params={"category": "bottle"}).json()
        assert at_stored["threshold"] == 0.05 and at_stored["n_changed"] == 0
        assert at_stored["counts"] == at_stored["stored"] == {"OK": sum(r["decision"] == "OK" for r in lines),
                                                              "NG": sum(r["decision"] == "NG" for r in lines)}
        for t in [scores[0] - 1, *scores, (scores[2] + scores[3]) / 2, scores[-1] + 1]:
            got = client.get("/v1/whatif", params={"category": "bottle", "threshold": t}).json()
            ng = sum(r["decision_score"] > t for r in lines)  # NG strictly above, as Decision.decide
            assert got["counts"] == {"OK": len(lines) - ng, "NG": ng}, t
            flipped = {r["key"] for r in lines if (r["decision_score"] > t) != (r["decision"] == "NG")}
            assert {c["id"] for c in got["changed"]} == flipped and got["n_changed"] == len(flipped)
            assert sum(got["histogram"]["counts"]) == len(lines)
        assert client.get("/v1/whatif", params={"category": "screw"}).status_code == 404  # nothing judged
        assert client.get("/v1/whatif", params={"category": "bottle", "threshold": "nan"}).status_code == 422


def test_thumbnails_are_the_overlay_scaled_to_160_px(pipeline):  # noqa: F811
    import io

    import numpy as np
    from PIL import Image

    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        body = inspect(client, png(7, (300, 400))).json()
        assert body["urls"]["thumb"] == f"/v1/results/{body['id']}/thumb.png"
        thumb, overlay = client.get(body["urls"]["thumb"]), client.get(body["urls"]["overlay"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        small = np.asarray(Image.open(io.BytesIO(thumb.content)))
        assert small.shape == (120, 160, 3) and len(thumb.content) < len(overlay.content)
        expected = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB").resize((160, 120), Image.BILINEAR, reducing_gap=None))
        assert np.abs(small.astype(int) - expected.astype(int)).mean() < 8  # the same picture, smaller
        assert client.get(body["urls"]["thumb"]).content == thumb.content
        assert client.get("/v1/results/" + "0" * 32 + "/thumb.png").status_code == 404
        assert client.get("/v1/results/nothex/thumb.png").status_code == 404


def test_before_pages_back_through_the_history(pipeline):  # noqa: F811
    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        ids = [inspect(client, png(i), name=f"b{i}.png").json()["id"] for i in range(4)]
        page = client.get("/v1/results", params={"before": ids[3], "limit": 2}).json()
        assert page["total"] == 3 and [r["id"] for r in page["results"]] == [ids[2], ids[1]]
        page = client.get("/v1/results", params={"before": ids[1], "limit": 2}).json()
        assert page["total"] == 1 and [r["id"] for r in page["results"]] == [ids[0]]
        assert client.get("/v1/results", params={"before": "x"}).status_code == 422


def test_heat_and_outline_pictures_a_person_can_read(pipeline):  # noqa: F811
    import io

    import cv2
    import numpy as np
    from PIL import Image

    def get(client, link):
        response = client.get(link)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(response.content)))

    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        for seed in range(400, 412):
            body = inspect(client, png(seed, (120, 160))).json()
            if body["decision"] == "NG":
                break
        assert body["decision"] == "NG", "no NG part among the seeds"
        mask, overlay = get(client, body["urls"]["mask"]) > 0, get(client, body["urls"]["overlay"])
        outlined = get(client, body["urls"]["outline"])
        eroded = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)),
                           borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        edge = mask & ~eroded
        assert edge.any()
        assert (outlined[edge] == (0, 255, 255)).all() and (outlined[~edge] == overlay[~edge]).all()
        coloured = get(client, body["urls"]["heat"])
        assert coloured.shape[0] == 120 and coloured.shape[1] > 160 and coloured.shape[2] == 3
        assert (coloured[..., 0] != coloured[..., 2]).any()  # colours, not grey
        assert client.get("/v1/results/" + "0" * 32 + "/heat.png").status_code == 404


def test_review_of_an_evaluate_folder_shows_the_ground_truth_outline(tmp_path: Path):
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from iapas.evaluation import EvalSettings, evaluate_dataset
    from iapas.evaluation.predictions import load_map_file
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewStore
    from iapas.serve.server import BackgroundServer
    from tests.test_eval_decisions import make_tree
    from tests.test_evaluation import fake_pipeline, write_profiles

    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    evaluate_dataset("mvtec", make_tree(tmp_path / "data"), out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    with BackgroundServer(create_app(ReviewStore(out), {}, None)) as url, httpx.Client(base_url=url, timeout=60) as client:
        listed = client.get("/v1/results?limit=1000").json()["results"]
        crack = next(r for r in listed if "/crack/" in r["key"] or "crack" in str(r.get("key")))
        records = [json.loads(line) for line in (out / "predictions" / "alpha.jsonl").read_text().splitlines()]
        _, truth = load_map_file(out / next(r for r in records if r["key"] == crack["key"])["map"])
        assert truth.any()
        gt = np.asarray(Image.open(io.BytesIO(client.get(crack["urls"]["gt"]).content)))
        overlay = np.asarray(Image.open(io.BytesIO(client.get(crack["urls"]["overlay"]).content)))
        eroded = cv2.erode(truth.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)),
                           borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        edge = truth & ~eroded  # 400x400: one pixel wide
        assert (gt[edge] == (255, 0, 255)).all() and (gt[~edge] == overlay[~edge]).all()


def test_whatif_of_scores_a_few_ulps_apart_answers_a_histogram() -> None:
    """One part scored 0.5 at a threshold of 0.5, asked about the next float up: numpy refused a
    histogram range that narrow (a 500 from /v1/whatif); the counts are still a plain recount."""
    from iapas.serve.whatif import what_if

    record = {"category": "c", "status": "ok", "decision": "OK", "decision_score": 0.5, "threshold": 0.5}
    for asked in (0.5000000000000001, None):
        answer = what_if([record], "c", asked)
        assert answer["n"] == 1 and sum(answer["histogram"]["counts"]) == 1, answer
