"""Manifests: CSV files that list many inputs, one job a row (``remove-clouds --manifest``, ``data patches
--manifest``). One reader, so both take the same files: a header whose names may be in any case and spaced, a
UTF-8 BOM, paths relative to the manifest's folder (a manifest travels with its scenes)."""

from __future__ import annotations

import csv
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from dsen2cr.bounds import Bounds, checked_bounds
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import map_s1_files
from dsen2cr.outputs.files import check_input_file


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest: its line in the file (the header is line 1) and its fields by column name (``""`` for
    an empty field or a column the manifest lacks)."""

    line: int
    fields: dict[str, str]

    def text(self, column: str) -> str:
        """The field, stripped of spaces."""
        return self.fields.get(column, "").strip()


def read_manifest_rows(
    path: str | Path, columns: tuple[str, ...], required: tuple[str, ...], header: str
) -> list[ManifestRow]:
    """The rows of the manifest CSV ``path``, keyed by column names whatever their case and the spaces around them
    (``' S2 , OUT '``). Refused in one line naming the file: not a CSV, a column that is none of ``columns`` (a
    misspelt one would be silently left out), a column twice, a header without the ``required`` ones (``header``
    is the one the message expects), a row with more fields than the header (an unquoted VV,VH pair or path with a
    comma), no rows."""
    path = check_input_file(path, "manifest")
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            raw_rows, given_names = list(reader), list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise DSen2CRError(f"{path}: not a readable CSV manifest ({error})") from None
    names = [name.strip().lower() for name in given_names]
    for given, name in zip(given_names, names, strict=True):
        if name not in columns:
            close = difflib.get_close_matches(name, columns, n=1)
            hint = "separate the columns with commas" if ";" in name or "\t" in name else ""
            hint = hint or (f"did you mean {close[0]!r}?" if close else "")
            raise DSen2CRError(
                f"{path}: manifest column {given.strip()!r} is not one of {', '.join(columns)}"
                + (f"; {hint}" if hint else "")
            )
        if names.count(name) > 1:
            raise DSen2CRError(f"{path}: manifest column {name!r} appears twice")
    if raw_rows and (missing := set(required) - set(names)):
        raise DSen2CRError(f"{path}: manifest header lacks {', '.join(sorted(missing))} (expected {header})")
    rows = []
    for line, row in enumerate(raw_rows, start=2):
        if row.get(None):  # DictReader's key for fields beyond the header
            raise DSen2CRError(
                f"{path}:{line}: more fields than the header's {len(given_names)}; quote a VV,VH pair or a path with a "
                'comma ("s1_vv.tif,s1_vh.tif")'
            )
        fields = {name: row.get(given) or "" for given, name in zip(given_names, names, strict=True)}
        rows.append(ManifestRow(line, fields))
    if not rows:
        raise DSen2CRError(f"{path}: manifest lists no scenes")
    return rows


def manifest_input(text: str, manifest: str | Path, *, pair: bool = False) -> str:
    """An input path of a manifest's field: relative paths (each of a ``VV,VH`` pair and of frames joined with ``+``
    when ``pair``: an S1 field) against the manifest's folder, URLs as they are."""
    base = Path(manifest).parent

    def rebased(part: str) -> str:
        return part if "://" in part else str(base / part)

    return map_s1_files(text.strip(), rebased, base) if pair else rebased(text.strip())


def row_bounds(row: ManifestRow, where: str, *, name_row: bool = True) -> Bounds | None:
    """A manifest row's ``bounds`` (four numbers, LEFT BOTTOM RIGHT TOP, apart by spaces) in its ``bounds_crs``
    (empty: the scene's CRS), or None when the row has none (the run's ``--bounds`` then hold for it). Refusals
    name the row (``where``), and so do the bounds' own later messages unless ``name_row`` is False (where the
    caller's messages name it)."""
    text, crs = row.text("bounds"), row.text("bounds_crs") or None
    if not text:
        if crs is not None:
            raise DSen2CRError(f"{where}: bounds_crs says what the row's bounds are in; give its bounds too")
        return None
    try:
        values = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise DSen2CRError(f"{where}: bounds: expected four numbers LEFT BOTTOM RIGHT TOP, got {text!r}") from None
    bounds = checked_bounds(values, crs, f"{where}: bounds", f"{where}: bounds_crs")
    return bounds if name_row else dataclasses.replace(bounds, label="bounds", crs_label="bounds_crs")
