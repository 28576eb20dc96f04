"""Session fixtures shared by every test package: a real Azurite, fresh names per test."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.azurite import external_connection, start_azurite  # noqa: E402


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
def _remove_combined_ca_bundles():
    """Each test CA gives the app a new combined bundle in the temp directory
    (shared/adapters/tls.py; one file in production): remove the ones this session wrote."""
    yield
    # Only the ones this process wrote: test sessions of other worktrees share the temp directory, and
    # removing their bundles mid-run fails their token requests (FileNotFoundError).
    from shared.adapters import tls
    for path in list(tls.written):
        Path(path).unlink(missing_ok=True)
        tls.written.discard(path)
