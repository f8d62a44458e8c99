import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# The paper's data lives beside the checkout (../shared/data/icm), never inside it.
SHARED_DATA = Path(os.environ.get("ICM_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "icm"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the ICM data at {SHARED_DATA}")
        pytest.skip(f"no ICM data at {SHARED_DATA}; set ICM_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_api():
    """One real SmolLM2 model for the whole session: loading it per test would waste the time budget."""
    from core.llm_api.llm import ModelAPI
    from core.llm_api.settings import Settings

    api = ModelAPI(settings=Settings(embedded_slots=2, embedded_ctx_per_slot=4096), show_progress=False)
    yield api
    api.close()
