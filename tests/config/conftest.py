import copy
from pathlib import Path

import pytest

from tunnel.config import load_yaml

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "examples" / "edge-config.yaml"
if not REFERENCE.exists():  # the checkout may live elsewhere than /work/main
    REFERENCE = Path("/work/shared/examples/edge-config.yaml")


@pytest.fixture(scope="session")
def reference_text() -> str:
    return REFERENCE.read_text()


@pytest.fixture()
def reference_doc(reference_text):
    return copy.deepcopy(load_yaml(reference_text))


@pytest.fixture(scope="session")
def reference_path() -> str:
    return str(REFERENCE)
