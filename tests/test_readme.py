"""The README's examples (#29 item 5): every ``dsen2cr`` command in its shell blocks is valid for today's command
line, and the ones that run on the bundled data do, as written."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_commands() -> list[str]:
    """Every ``dsen2cr …`` line of the README's bash blocks (continuations joined, comments and redirections
    dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" > ")[0].strip()
            if line.startswith("dsen2cr ") and line not in ("dsen2cr --help", "dsen2cr --version"):
                commands.append(line)
    return commands


@pytest.mark.parametrize("command", _readme_commands())
def test_every_readme_command_parses(command: str) -> None:
    """Options, positionals and overrides as the README writes them are accepted (a renamed option fails here)."""
    from dsen2cr.cli import build_parser, parse_arguments

    args = parse_arguments(build_parser(), shlex.split(command)[1:])
    assert getattr(args, "handler", None) is not None, command


def test_the_first_scene_example_runs_on_the_bundled_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'Remove clouds from whole scenes', its first two commands as written (the demo's weights stood in for by
    fresh ones at the same path): the sample is copied, the scene's clouds removed, the map, preview and STAC item
    written."""
    from dsen2cr import create_model
    from dsen2cr.cli import main
    from dsen2cr.weights import save_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-output" / "weights").mkdir(parents=True)
    save_weights(create_model("dsen2cr-small-nosar"), tmp_path / "demo-output/weights/dsen2cr-demo-nosar.safetensors")
    commands = [c for c in _readme_commands() if "sample" in c][:2]
    assert commands[0] == "dsen2cr data sample --out sample" and "T33UUU_cloudfree.tif" in commands[1]
    for command in commands:
        assert main([*shlex.split(command)[1:], *(["--no-progress"] if "remove-clouds" in command else [])]) == 0
    assert sorted(p.name for p in tmp_path.glob("T33UUU_*")) == [
        "T33UUU_before_after.png",
        "T33UUU_cloudfree.json",
        "T33UUU_cloudfree.tif",
        "T33UUU_mask.tif",
    ]
    item = json.loads((tmp_path / "T33UUU_cloudfree.json").read_text())
    assert item["properties"]["datetime"] == "2017-02-16T10:21:01Z"  # the scene's name: T33UUU_20170216T102101_…
    assert item["assets"]["image"]["href"] == "T33UUU_cloudfree.tif"
    assert os.listdir(tmp_path / "sample")
