"""Shared test fixtures.

The real datasets live outside the repository (``../shared/data`` beside a checkout, or ``$MPCGEN_DATA_DIR``);
tests read them from there and fail, rather than skip, when they are missing: CI always has them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The staged datasets folder (``$MPCGEN_DATA_DIR`` or ``../shared/data`` beside the repository)."""
    env = os.environ.get("MPCGEN_DATA_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not (path / "e2e").is_dir():
        pytest.fail(f"datasets not found at {path}: set MPCGEN_DATA_DIR to the folder holding e2e/, webnlg/, multiwoz/")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Deterministic tests; two cores shared by everything that runs here.
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="module")
def crypten():
    """CrypTen initialised in this (single) process for backend checks, and shut down after the module, so later
    tests that start real parties (or call init_party in-process) find it uninitialised."""
    from mpcgen.mpc.compat import crypten as _crypten

    _crypten.init()
    yield _crypten
    _crypten.uninit()
