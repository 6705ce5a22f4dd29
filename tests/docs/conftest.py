"""The docs tests' fixture: the site's generated pages, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def generated():
    """The site's generated pages, built once for the session from this checkout."""
    from docsgen.pages import generate

    return generate()
