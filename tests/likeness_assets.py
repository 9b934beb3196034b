"""Where the shared test assets are (importable from tests: pytest's ``pythonpath`` adds tests/)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
PACK_DIR = SHARED / "models" / "insightface" / "models" / "likeness_test"
FACES = SHARED / "faces"
PEOPLE = FACES / "people"
