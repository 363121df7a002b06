"""Paths the tests share: the project root, and the pinned copy of the sample mappings.

The suite runs on `tests/mappings`, a copy of the samples as shipped, never on `mappings/`:
an admin who customises their mappings still gets a green `make test`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "tests" / "mappings"
