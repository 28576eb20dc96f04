"""Session fixtures shared by every test package: a real Azurite, fresh names per test."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.azurite import external_connection, start_azurite  # noqa: E402

# Everything the tests, the app and the dev hosts they start write to the temp directory (combined CA
# bundles, spooled attachments, Chromium profiles) goes to one directory of this session, removed at
# its end: two sessions on one machine never delete each other's files.
_SESSION_TMP = tempfile.mkdtemp(prefix="inbox-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # gettempdir() reads TMPDIR again


@pytest.fixture(scope="session")
def azurite_connection() -> str:
    """Connection string of a real Azurite (started once per session, in memory)."""
    external = external_connection()
    if external:
        yield external
        return
    azurite = start_azurite()
    try:
        yield azurite.connection_string
    finally:
        azurite.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for table and queue names (letters and digits only)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session", autouse=True)
def _remove_session_temp_directory():
    """Each Graph simulator start makes a new throwaway CA, so each gives the app a new combined
    bundle in the temp directory (shared/adapters/tls.py; one file in production): the session's
    own temp directory goes, with them, when the session ends."""
    yield
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
