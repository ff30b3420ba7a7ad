"""Fixtures of the UI tests."""
import pytest

from tests.studio.ui.public_app import start_public


@pytest.fixture(scope="module")
def public(family):
    """The app in public mode (as on a Space), one per test module: see `tests.studio.ui.public_app`."""
    yield from start_public(family)
