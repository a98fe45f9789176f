import logging
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("onnxopt").setLevel(logging.DEBUG)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator of this test's own, seeded from its id (path, name and parameters): its data are the same
    whichever tests ran before it and however ``-n`` splits the run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _module_rng_is_the_tests_own(request, rng, monkeypatch):
    """Test modules draw data from a module-level ``RNG`` (through their helpers too); for each test it is
    replaced by that test's own ``rng``, so no test consumes another's random stream."""
    module = getattr(request, "module", None)
    if isinstance(getattr(module, "RNG", None), np.random.Generator):
        monkeypatch.setattr(module, "RNG", rng)
