"""Records that a long command appends to as it goes, so that a stopped run can go on from them (an evaluation's
progress, a scene's journal): a JSON Lines file whose first line says what the record is of (its ``format`` and the
run's ``identity``) and whose other lines each describe one finished step. Lines are appended, never rewritten; a
line cut short by a kill is dropped when read, with whatever follows it."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import write_text_atomic


def start_record(path: Path, record_format: str, identity: dict[str, Any]) -> None:
    """Write a new record at ``path``: its header line alone."""
    header = json.dumps({"format": record_format, "identity": identity}, sort_keys=True)
    write_text_atomic(path, header + "\n")


def read_record(path: Path, record_format: str, *, what: str, again: str) -> tuple[dict[str, Any], list[str]]:
    """The identity in the header of the record at ``path`` and its other lines; a file that is not such a record
    (``what``: "a scene's journal") or of another format is refused in one line naming it, with ``again``: how to
    start over ("--overwrite starts the scene again")."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
        header = json.loads(lines[0])
        found, identity = header["format"], header["identity"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise DSen2CRError(f"{path}: not {what} ({error}); {again}") from None
    if found != record_format:
        raise DSen2CRError(f"{path}: written by another version of dsen2cr (format {found!r}); {again}")
    if not isinstance(identity, dict):
        raise DSen2CRError(f"{path}: not {what} (its header holds no identity); {again}")
    return identity, lines[1:]


def complete_lines(lines: Sequence[str], keys: Collection[str]) -> list[dict[str, Any]]:
    """The steps' lines as written (JSON objects with ``keys``), up to the first one cut short (or empty)."""
    steps = []
    for line in lines:
        try:
            step = json.loads(line)
        except ValueError:
            break
        if not (isinstance(step, dict) and set(keys) <= step.keys()):
            break
        steps.append(step)
    return steps


def keep_lines(path: Path, lines: Sequence[str], count: int) -> None:
    """Rewrite the record at ``path`` without its lines after the first ``count`` steps (a line cut short by a
    kill), so that appends go on after the last complete one; ``lines``: as :func:`read_record` gave them."""
    header = path.read_text(encoding="utf-8").split("\n", 1)[0]
    write_text_atomic(path, "\n".join([header, *lines[:count]]) + "\n")
