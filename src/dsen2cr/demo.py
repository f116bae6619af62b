"""``dsen2cr demo``: the whole workflow on the bundled sample (filled in as the workflow lands)."""

from __future__ import annotations

from pathlib import Path


def run_demo(out: str | Path) -> None:
    """Run the demo into ``out``."""
    print(f"dsen2cr demo: output folder {out}")
