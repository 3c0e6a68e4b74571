"""docs/detectors.md documents every configuration key and every detection kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectors.config import default_tree
from gridwatch.domain import DetectionKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "detectors.md"


def leaf_keys(tree: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= leaf_keys(v)
        else:
            out.add(k)
    return out


def test_every_config_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    tree = default_tree()
    tree["generic"].pop("channels")  # channel keys are documented as a table of options
    missing = sorted(k for k in leaf_keys(tree) if f"`{k}`" not in text)
    assert not missing, f"undocumented keys in docs/detectors.md: {missing}"
    for opt in ("score", "min_scale", "stuck_readings", "stuck_min_s", "lo", "hi", "hi_ref"):
        assert f"`{opt}`" in text


def test_every_detection_kind_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [k.value for k in DetectionKind if f"| `{k.value}` |" not in text]
    assert not missing, f"detection kinds without a row in docs/detectors.md: {missing}"
