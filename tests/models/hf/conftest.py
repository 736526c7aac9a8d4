"""The session-wide ``zoo`` of tiny HF models (see hf_zoo.py)."""
import pytest

from hf_zoo import Zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
  return Zoo(tmp_path_factory.mktemp("hf_zoo"))
