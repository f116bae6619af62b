"""An ensemble file (docs/design.md §6): a JSON file that names an ensemble's members (their paths, relative to it
where they can be, and their SHA-256) and one factor per band for the ensemble's sigma, fitted by ``dsen2cr
weights calibrate-sigma --weights A B C --out ensemble.json``. ``--weights ensemble.json`` runs the ensemble as
``--weights A B C`` does, with its sigma (aleatoric and epistemic parts alike) times the factors.

The members' own calibrations scale their sigma before they are combined; the ensemble's factors scale the
combination, which the members' alone cannot calibrate: their disagreement adds to every member's sigma.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import check_input_file, file_sha256, write_text_atomic
from dsen2cr.sigma_record import calibration_text, checked_sigma_scale

#: What an ensemble file's ``format`` says (a later format gets another number).
FORMAT = "dsen2cr ensemble 1"
#: The suffix that marks an ensemble file among ``--weights``.
SUFFIX = ".json"


@dataclass(frozen=True)
class EnsembleFile:
    """An ensemble file, read and checked: its ``members`` (paths as found), the sigma calibration it holds
    (``sigma_scale``: ``scale``, one factor per band, and what it was fitted by and on) and its own SHA-256."""

    path: Path
    members: tuple[Path, ...]
    sigma_scale: dict[str, Any]
    sha256: str

    @property
    def scale(self) -> tuple[float, ...]:
        """One factor per S2 band for the ensemble's sigma."""
        return tuple(float(k) for k in self.sigma_scale["scale"])

    @property
    def calibration(self) -> str:
        """How outputs name the ensemble's calibration (``DSEN2CR_SIGMA_CALIBRATION``)."""
        return calibration_text(self.sigma_scale, f"ensemble sigma ({self.path.name})")


def is_ensemble_file(path: str | Path) -> bool:
    """Whether a ``--weights`` value names an ensemble file (by its suffix; its content is checked on reading)."""
    return Path(path).suffix.lower() == SUFFIX


def split_weights(weights: Sequence[str | Path]) -> tuple[list[str], EnsembleFile | None]:
    """The weights files that ``--weights`` names, as members to load, and the ensemble file they came from (None
    for weights files named one by one). An ensemble file is the whole ensemble: named beside others, refused."""
    files = [str(w) for w in weights]
    ensembles = [w for w in files if is_ensemble_file(w)]
    if not ensembles:
        return files, None
    if len(files) > 1:
        raise DSen2CRError(
            f"{ensembles[0]}: an ensemble file names the whole ensemble (its members and their sigma scale); give it "
            "alone to --weights, or name the members one by one without it"
        )
    ensemble = read_ensemble_file(ensembles[0])
    return [str(member) for member in ensemble.members], ensemble


def read_ensemble_file(path: str | Path) -> EnsembleFile:
    """The ensemble file at ``path``, checked: its format, at least two members, each found (beside it, where
    relative) with the SHA-256 it recorded, and its sigma scale; a one-line error naming what is wrong."""
    path = check_input_file(path, "ensemble")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise DSen2CRError(f"{path}: not an ensemble file (not JSON: {error})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise DSen2CRError(
            f'{path}: not an ensemble file (no "format": "{FORMAT}"); ensemble files are written by dsen2cr '
            "weights calibrate-sigma --weights A B C --out NAME.json"
        )
    listed = content.get("members")
    if not isinstance(listed, list) or len(listed) < 2 or not all(_member_entry(entry) for entry in listed):
        raise DSen2CRError(f'{path}: its "members" must list at least two members, each with a "file" and its "sha256"')
    members = tuple(_checked_member(path, entry["file"], entry["sha256"]) for entry in listed)
    sigma_scale = checked_sigma_scale(content.get("sigma_scale"), path)
    return EnsembleFile(path, members, sigma_scale, file_sha256(path) or "unknown")


def _member_entry(entry: object) -> bool:
    """Whether a member's entry holds a file name and a SHA-256 as text."""
    return isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)


def _checked_member(path: Path, name: str, sha256: str) -> Path:
    """A member's path (relative to the ensemble file's folder unless absolute), found with its recorded SHA-256."""
    member = Path(name) if Path(name).is_absolute() else path.parent / name
    if not member.is_file():
        raise DSen2CRError(f"{path}: its member {name} is not found (looked for {member})")
    found = file_sha256(member)
    if found != sha256:
        raise DSen2CRError(
            f"{path}: its member {member} has changed since the ensemble was calibrated (SHA-256 "
            f"{(found or 'unreadable')[:12]}…, recorded {sha256[:12]}…); calibrate the ensemble again"
        )
    return member


def write_ensemble_file(out: str | Path, members: Sequence[str | Path], sigma_scale: dict[str, Any]) -> Path:
    """Write an ensemble file of ``members`` (named as given, relative to ``out``'s folder where they share a drive:
    a link stays a link) with their SHA-256 and the calibration ``sigma_scale`` (a record as
    :func:`~dsen2cr.sigma_record.checked_sigma_scale` takes), atomically."""
    out = Path(out)
    folder = out.parent.absolute()
    entries = []
    for member in members:
        absolute = Path(member).absolute()
        try:
            name = os.path.relpath(absolute, folder)
        except ValueError:  # another drive (Windows): no relative path
            name = str(absolute)
        entries.append({"file": Path(name).as_posix(), "sha256": file_sha256(absolute) or "unknown"})
    content = {"format": FORMAT, "members": entries, "sigma_scale": checked_sigma_scale(sigma_scale, out)}
    return write_text_atomic(out, json.dumps(content, indent=2) + "\n")
