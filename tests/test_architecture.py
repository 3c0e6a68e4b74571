"""Data flows one way: sim -> ingest -> detectors -> rules -> alerts, storage beside.

This test reads every module's imports (statically, with ``ast``) and fails when a stage
imports a later stage, or when the shared vocabulary imports any stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sim", "ingest", "detectors", "rules", "alerts", "storage")
VOCABULARY = {
    "domain",
    "errors",
    "registry",
    "batch",
    "contract",
    "logs",
    "types",
    "clock",
    "deadletter",
    "broker",
}
ALLOWED = {
    "vocabulary": set(),
    "sim": set(),
    "ingest": {"storage"},
    "detectors": {"storage"},
    "rules": {"storage"},
    "alerts": {"rules", "storage"},
    "storage": set(),
}


def _layer(module_path: Path) -> str | None:
    rel = module_path.relative_to(ROOT).parts
    if rel[0] in STAGES:
        return rel[0]
    if rel[0] == "gridwatch" and Path(rel[-1]).stem in VOCABULARY and len(rel) == 2:
        return "vocabulary"
    return None  # wiring (gridwatch/cli, pipeline, config...) may import anything


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules() -> list[Path]:
    files = [p for d in (*STAGES, "gridwatch") for p in (ROOT / d).rglob("*.py")]
    return sorted(files)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upstream_imports(path: Path) -> None:
    layer = _layer(path)
    if layer is None:
        return
    bad = []
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "gridwatch":
            sub = name.split(".")[1] if "." in name else ""
            if sub not in VOCABULARY:
                bad.append(name)
        elif top in STAGES and top != layer and top not in ALLOWED[layer]:
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) must not import {sorted(bad)}"


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from alerts.queue import X\nimport gridwatch.pipeline\n")
    assert _imports(bad) == {"alerts.queue", "gridwatch.pipeline"}
