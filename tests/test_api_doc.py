"""docs/API.md is the repository's copy of the shared contract (../shared/spec/API.md): the
precision contract the suites' tolerances derive from must be the one the project agreed."""
import pytest

from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "spec" / "API.md"


def test_docs_api_is_the_shared_contract():
    if not SHARED.exists():
        pytest.skip(f"no shared contract at {SHARED}")
    assert (ROOT / "docs" / "API.md").read_text() == SHARED.read_text(), (
        "docs/API.md differs from ../shared/spec/API.md: copy the shared contract into docs/API.md")


def test_docs_api_states_the_precision_contract():
    assert "Precision contract" in (ROOT / "docs" / "API.md").read_text()
