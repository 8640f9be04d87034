"""The dispositions file of a store category folder (iapas.engine.dispositions)."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from iapas.engine.dispositions import (
    DISPOSITIONS,
    DISPOSITIONS_FILE,
    append_disposition,
    check_disposition,
    current_disposition,
    read_dispositions,
)


def test_the_four_dispositions_and_the_file_name():
    assert DISPOSITIONS == ("confirmed_ng", "false_call", "missed_defect", "confirmed_ok")
    assert DISPOSITIONS_FILE == "dispositions.jsonl"


def test_check_disposition_names_the_allowed_values():
    assert check_disposition("false_call") == "false_call"
    for bad in ("FALSE_CALL", "ok", "", None, 3):
        with pytest.raises(ValueError) as err:
            check_disposition(bad)
        message = str(err.value)
        assert "\n" not in message
        assert "confirmed_ng, false_call, missed_defect, confirmed_ok" in message


def test_append_writes_one_line_per_entry_and_a_later_one_supersedes(tmp_path):
    append_disposition(tmp_path, {"id": "a", "disposition": "confirmed_ng", "who": "ana", "at": "2026-12-07T10:00:00+00:00"})
    append_disposition(tmp_path, {"id": "b", "disposition": "confirmed_ok", "who": None, "note": "fine"})
    append_disposition(tmp_path, {"id": "a", "disposition": "false_call", "who": "bo", "note": "dust"})
    lines = (tmp_path / "dispositions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first == {"id": "a", "disposition": "confirmed_ng", "who": "ana", "at": "2026-12-07T10:00:00+00:00", "note": None}
    third = json.loads(lines[2])
    assert third["at"].endswith("+00:00") and "T" in third["at"]  # filled in: ISO-8601 UTC
    history = read_dispositions(tmp_path)
    assert [e["disposition"] for e in history["a"]] == ["confirmed_ng", "false_call"]  # oldest first
    assert current_disposition(history["a"]) == "false_call"
    assert current_disposition(history["b"]) == "confirmed_ok" and history["b"][0]["note"] == "fine"
    assert current_disposition(history.get("c")) is None


def test_bad_entries_are_refused_and_nothing_is_written(tmp_path):
    for bad in ({"id": "a", "disposition": "maybe"}, {"id": "", "disposition": "false_call"},
                {"id": "a", "disposition": "false_call", "who": 5}):
        with pytest.raises(ValueError):
            append_disposition(tmp_path, bad)
    assert not (tmp_path / DISPOSITIONS_FILE).exists()


def test_no_file_reads_as_no_history(tmp_path):
    assert read_dispositions(tmp_path) == {}


def test_torn_and_malformed_lines_are_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / DISPOSITIONS_FILE
    good = {"id": "a", "disposition": "confirmed_ng", "who": "x", "at": "2026-12-07T10:00:00+00:00", "note": None}
    path.write_text(
        json.dumps(good) + "\n"
        + '{"id": "b", "disposition": "wrong", "who": null, "at": "t", "note": null}\n'
        + "[1, 2]\n"
        + '{"id": "a", "dispos',  # torn by a killed writer
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="iapas.engine.dispositions"):
        history = read_dispositions(tmp_path)
    assert history == {"a": [good]}
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"{path}:2:" in m for m in warned)
    assert any(f"{path}:3:" in m for m in warned)
    assert any(f"{path}:4:" in m for m in warned)
    # the next append is not glued to the torn line
    append_disposition(tmp_path, {"id": "a", "disposition": "false_call", "who": "y"})
    history = read_dispositions(tmp_path)
    assert [e["disposition"] for e in history["a"]] == ["confirmed_ng", "false_call"]


def test_concurrent_appends_all_land_whole(tmp_path):
    def worker(n: int) -> None:
        for i in range(25):
            append_disposition(tmp_path, {"id": f"r{n}", "disposition": DISPOSITIONS[i % 4], "who": f"w{n}"})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = read_dispositions(tmp_path)
    assert sorted(history) == ["r0", "r1", "r2", "r3"]
    assert all(len(h) == 25 for h in history.values())
    assert all(current_disposition(h) == DISPOSITIONS[24 % 4] for h in history.values())
