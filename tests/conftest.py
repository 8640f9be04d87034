"""Shared fixtures. Hub access is switched off before transformers is imported anywhere."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import atexit
import shutil
import tempfile
from pathlib import Path

# The model-fingerprint hash cache ($XDG_CACHE_HOME/iapas) of every test and the commands it starts
# goes to a folder of this session, never to the user's ~/.cache (tests that check it set their own).
_CACHE_HOME = tempfile.mkdtemp(prefix="iapas-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of every tiny model (``grounding-dino``, ``sam``, and stage 1's), built once.

    The detector resizes to a 320 px short side (not the real 800) to keep the suite fast.
    """
    from iapas.testing import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"), detector_shortest_edge=320)
