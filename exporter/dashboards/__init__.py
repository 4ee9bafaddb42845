"""Grafana dashboards generated from Python data; `python -m exporter.dashboards` writes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.dashboards import actions, funnel, health, overview

BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "overview.json": overview.build,
    "funnel.json": funnel.build,
    "actions.json": actions.build,
    "exporter.json": health.build,
}
"""Committed file name -> dashboard builder."""

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dashboards"
"""Where the committed dashboard JSON lives (the repository's dashboards/)."""


def render(build: Callable[[], dict[str, Any]]) -> str:
    """The committed text of one dashboard: indented JSON with a final newline."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build) for name, build in BUILDERS.items()}


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every dashboard into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def drift(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of the dashboards whose file in `directory` differs from the generator's output."""
    out = []
    for name, text in rendered().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out
