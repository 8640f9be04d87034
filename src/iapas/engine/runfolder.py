"""A run folder's rules, for ``segment`` (:mod:`iapas.engine.runner`), ``evaluate``
(:mod:`iapas.evaluation.runfolder`) and the station's store: ``run.json`` written with the
disk-full stop and read back, the resume checks against the recorded signature
(:mod:`iapas.engine.signature`), and the image keys of ``results.jsonl`` with the records
that a resumed run takes as done (:func:`match_finished`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from iapas.core.files import atomic_write_text
from iapas.core.names import OutsideRootError, path_inside
from iapas.core.storage import is_disk_full, stop_reason
from iapas.engine.log import ResultsLog
from iapas.engine.outputs import output_names
from iapas.engine.records import RESULTS_FILE, RUN_FILE, source_stamp
from iapas.engine.signature import named_models
from iapas.models.fingerprint import signature_diff
from iapas.models.loading import ModelLoadError

logger = logging.getLogger(__name__)

ADVICE = "use another --out folder, or --restart to discard them"


class RunConflictError(RuntimeError):
    """The output folder holds a run made with other settings."""


# --- run.json ---------------------------------------------------------------------------------------


def write_run_file(path: Path, content: Mapping[str, Any], **dump: Any) -> str | None:
    """Write ``run.json`` atomically (``dump``: more :func:`json.dumps` options). A full disk
    stops the run before its first image: returns why (:func:`iapas.core.storage.stop_reason`);
    None once written. Other write errors are raised."""
    try:
        atomic_write_text(path, json.dumps(content, indent=2, **dump) + "\n")
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write: %s", path, exc)
        return stop_reason(exc)
    return None


def read_run(path: Path, advice: str = ADVICE) -> dict[str, Any] | None:
    """A run file's content (None: there is none, or it holds no object); an unreadable one
    raises :class:`RunConflictError`."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunConflictError(f"{path}: unreadable ({exc}); {advice}") from None
    return data if isinstance(data, dict) else None


# --- resume checks ----------------------------------------------------------------------------------


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each key whose value differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_recorded(
    out_dir: Path, recorded: Any, signature: Mapping[str, Any], *, unreadable: str, advice: str = ADVICE, detailed: bool = False
) -> None:
    """Raise :class:`RunConflictError` when results recorded with the signature ``recorded`` cannot
    be resumed with ``signature``: no readable signature (``unreadable`` says so), other settings,
    other models by fingerprint (their paths are informative only) or no fingerprints at all (a
    run of an older iapas; see :func:`iapas.models.fingerprint.signature_diff`). ``detailed``:
    name each changed setting's old and new value."""
    if not isinstance(recorded, dict):
        raise RunConflictError(f"{unreadable}; {advice}")
    diff = signature_diff(recorded, signature)
    if diff:
        details = [item for item in differences(recorded, dict(signature)) if item.split(":", 1)[0] in diff.changed] if detailed else None
        raise RunConflictError(f"{out_dir} holds results {diff.describe(details)}; {advice}")


def check_signature(run_file: Path, log: ResultsLog, signature: Mapping[str, Any], out_dir: Path, advice: str = ADVICE) -> None:
    """:func:`check_recorded` for the results still in ``log``, with ``run_file``'s signature
    (run.json is written before the first result, so results without one cannot be told apart)."""
    if not (log.path.exists() and log.path.stat().st_size > 0):
        return
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8")).get("signature")
    except FileNotFoundError:
        raise RunConflictError(f"{out_dir} holds results but no {run_file.name} saying what made them; {advice}") from None
    except (OSError, ValueError, AttributeError) as exc:
        previous = exc
    check_recorded(out_dir, previous, signature, unreadable=f"{run_file}: unreadable, no signature of its results", advice=advice)


def check_models(out_dir: Path, detector: str, segmenter: str) -> None:
    """Refuse, before any model is loaded, a run folder whose results were made with other models
    (by fingerprint, whatever the paths) or by an older iapas: :func:`check_signature` of the
    recorded signature with these models in it. Only models known by content (a folder, a cached
    hub revision) are compared here: what a hub id not in the cache loads is known once loaded.
    Other settings, an unreadable run.json and a model folder that does not exist are left to
    the full check and to loading (see
    :func:`iapas.engine.signature.named_models`)."""
    run_file = out_dir / RUN_FILE
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8")).get("signature")
        known = named_models(detector, segmenter)
    except (OSError, ValueError, AttributeError, ModelLoadError):
        return
    if isinstance(previous, dict) and known:
        check_signature(run_file, ResultsLog(out_dir / RESULTS_FILE), {**previous, **known}, out_dir)


# --- image keys and resume ---------------------------------------------------------------------------


def assign_keys(paths: Sequence[Path], roots: Sequence[Path] | None = None) -> list[str]:
    """A unique output name per input, without suffix (``crack/000``), relative to its own root.

    ``roots``: the folder each key is relative to (see :func:`iapas.data.search.search_images`: the folder
    given, its parent when several inputs found images, a named file's own folder); without, each
    path's own folder (the key is the file's name). A key depends on its own path and root, not on
    the other inputs, so it stays the same when an unrelated input is added, removed or missing.
    Names that still collide are told apart the same way every time: first they keep their suffix
    (``000.jpg``), then each takes one more leading folder (``x/a/000`` and ``y/a/000``).
    """
    absolute = [os.path.abspath(p) for p in paths]  # not resolve(): keep symlinks' own names
    if roots is not None and len(roots) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(roots)} roots")
    bases = [os.path.abspath(r) for r in roots] if roots is not None else [os.path.dirname(a) for a in absolute]
    levels = [0] * len(absolute)
    keys = [_key_at(a, b, 0) or a for a, b in zip(absolute, bases)]
    while True:
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        clashes = [group for group in groups.values() if len(group) > 1]
        if not clashes:
            return keys
        moved = False
        for group in clashes:
            for i in group:
                longer = _key_at(absolute[i], bases[i], levels[i] + 1)
                if longer is not None:
                    levels[i] += 1
                    keys[i] = longer
                    moved = True
        if not moved:
            raise ValueError(f"the same file is given twice: {absolute[clashes[0][0]]}")


def _key_at(path: str, base: str, level: int) -> str | None:
    """Key candidate ``level`` of ``path``: relative to ``base`` and then to each folder above it
    in turn (``level // 2`` folders up), without its suffix at even levels, with it at odd ones;
    None above the filesystem root. A base that does not hold the path is the path's own folder."""
    if not path.startswith(base.rstrip(os.sep) + os.sep):
        base = os.path.dirname(path)
    for _ in range(level // 2):
        parent = os.path.dirname(base)
        if parent == base:
            return None
        base = parent
    relative = PurePosixPath(Path(os.path.relpath(path, base)).as_posix())
    return str(relative if level % 2 else relative.with_suffix(""))


def match_finished(
    paths: Sequence[Path], keys: Sequence[str], log: ResultsLog, out_dir: Path, threshold: float, overlay: bool,
    records: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The finished records that stand for this run's images, by this run's key (``records``:
    the log's, when the caller has read them already; they are not changed).

    An image is matched by its source first (absolute path, size, modification time; see
    :func:`is_done`), then by its key: a finished record of the same file under another key (the
    inputs were given another way) is re-keyed, its output files renamed to the new key's names,
    so that it is neither segmented again nor listed twice. Other records of the same file
    under other keys (older duplicates, failures) are dropped with their files, and so are failed
    records of files that no longer exist and are not in this run (a mistyped path).
    """
    records = log.read() if records is None else records
    by_image: dict[str, list[str]] = {}
    for key, record in records.items():
        if isinstance(record.get("image"), str):
            by_image.setdefault(record["image"], []).append(key)
    in_run = {os.path.abspath(p) for p in paths}
    finished: dict[str, dict[str, Any]] = {}
    renames: dict[str, str] = {}  # old key -> this run's key
    drop: set[str] = set()
    for path, key in zip(paths, keys):
        same = by_image.get(os.path.abspath(path), [])
        done = [k for k in same if is_done(records[k], path, out_dir, threshold, overlay)]
        chosen = key if key in done else (done[-1] if done else None)
        drop.update(k for k in same if k not in (key, chosen))
        if chosen is not None:
            finished[key] = records[chosen]
            if chosen != key:
                renames[chosen] = key
    drop.update(
        k for k, r in records.items()
        if r.get("status") == "failed" and isinstance(r.get("image"), str)
        and r["image"] not in in_run and not os.path.lexists(r["image"])
    )
    if renames or drop:
        finished.update(_rekey(log, records, renames, drop, out_dir))
    return finished


def _rekey(
    log: ResultsLog, records: dict[str, dict[str, Any]], renames: dict[str, str], drop: set[str], out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Give the records ``renames`` names (old key -> new key) and drop the ``drop`` ones, in an
    order that a killed run leaves consistent: (1) the renamed records' files go to temporary
    names (which the next run removes), (2) whatever else holds the new names and the dropped
    records' files are removed, (3) results.jsonl is rewritten atomically, (4) the files take
    their new names. A record whose files are not all there is not done, so an image caught
    half way is segmented again, never given another image's files. Returns the renamed records."""
    moves: list[tuple[Path, Path]] = []  # temporary name, new name
    renamed: dict[str, dict[str, Any]] = {}
    emptied: set[Path] = set()
    for old, new in renames.items():
        record = records[old]
        names = output_names(new)
        outputs: dict[str, str] = {}
        for kind, rel in record.get("outputs", {}).items():
            source = out_dir / rel
            fd, temp = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".tmp" + source.suffix, dir=source.parent)
            os.close(fd)
            os.replace(source, temp)
            emptied.add(source.parent)
            outputs[kind] = names.get(kind, rel)
            moves.append((Path(temp), out_dir / outputs[kind]))
        renamed[new] = {**record, "key": new, "outputs": outputs}
    superseded = drop | set(renames) | set(renames.values())
    kept = {k: r for k, r in records.items() if k not in superseded}
    kept.update(renamed)
    referenced = {p for r in kept.values() for p in output_paths(out_dir, r)}
    stale = [p for k in drop for p in output_paths(out_dir, records[k])]
    for path in [final for _, final in moves] + [p for p in stale if p not in referenced]:
        path.unlink(missing_ok=True)
        emptied.add(path.parent)
    atomic_write_text(log.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()))
    for temp, final in moves:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
    for folder in sorted(emptied, key=lambda f: -len(f.parts)):  # folders the old names leave empty
        while folder != out_dir and out_dir in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    logger.info("resuming %d finished image(s) under new names; dropped %d stale record(s)", len(renames), len(drop))
    return renamed


def is_done(record: dict[str, Any], path: Path, out_dir: Path, threshold: float, overlay: bool) -> bool:
    """Whether a previous record can stand for ``path`` in this run."""
    if record.get("status") != "ok" or record.get("threshold") != threshold:
        return False
    stamp = source_stamp(path)
    if any(record.get(k) != v for k, v in stamp.items()):
        return False  # another file under the same key, or the file changed since
    outputs = record.get("outputs", {})
    if any(kind not in outputs for kind in output_names(record.get("key", ""), overlay)):
        return False
    files = output_paths(out_dir, record)
    return len(files) == len(outputs) and all(f.exists() for f in files)


def output_paths(out_dir: Path, record: dict[str, Any]) -> list[Path]:
    """The files a record's ``outputs`` name that lie inside ``out_dir``: a hand-edited
    results.jsonl naming ``../../file`` never gets a file outside renamed or deleted."""
    paths = []
    outputs = record.get("outputs")
    for rel in (outputs.values() if isinstance(outputs, dict) else ()):
        try:
            paths.append(path_inside(out_dir, str(rel)))
        except OutsideRootError as exc:
            logger.warning("%s: record %r: %s", out_dir / RESULTS_FILE, record.get("key"), exc)
    return paths
