"""Shared fixtures: the real clips of ../shared/data (skipped when absent), the example clip."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GRACECODEC_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "manifest.csv").is_file():
        pytest.skip(f"real clips not available: {DATA}/manifest.csv is absent")
    return DATA


@pytest.fixture(scope="session")
def example_clip(tmp_path_factory) -> Path:
    """The self-made example talking-head clip (1.2 s at 25 fps, 640x480)."""
    from codec.example import write_example_clip

    path = tmp_path_factory.mktemp("example") / "example.mp4"
    write_example_clip(path, seconds=1.2, fps=25)
    return path
