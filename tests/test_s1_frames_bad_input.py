"""Bad S1 frames joined with ``+`` in remove-clouds' ``--s1``, table-driven through the console entry point (the
``check_case`` fixture): refused before any scene runs, in one line that names the frame or the value and what is
wrong, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
ORIGIN = from_origin(500000, 5000000, 10, 10)
FIRST = "S1A_IW_GRDH_1SDV_20230608T051234_x_db.tif"  # the pass's first frame, sensed 2023-06-08 05:12:34 UTC


def _frame(tmp: Path, name: str, *, origin: tuple[float, float] = (500000, 5000000), linear: bool = False) -> Path:
    """An S1 frame named ``name`` holding the east half of the test scene's grid (or a grid at ``origin``)."""
    db = np.random.default_rng(2).uniform(-25, -5, size=(2, 40, 50)).astype(np.float32)
    db[1] -= 6
    db[:, :, :25] = np.nan
    values = 10 ** (db / 10) if linear else db
    return write_geotiff(tmp / name, values, crs=UTM32N, transform=from_origin(*origin, 10, 10))


def _remove(tmp: Path, s1: str) -> list[str]:
    """remove-clouds of the test scene with ``s1`` (its first frame holding the west half) into ``o.tif``."""
    s2, _ = tmp.scene()
    db = np.random.default_rng(3).uniform(-25, -5, size=(2, 40, 50)).astype(np.float32)
    db[1] -= 6
    db[:, :, 25:] = np.nan
    write_geotiff(tmp / FIRST, db, crs=UTM32N, transform=ORIGIN)
    weights = str(tmp.weights("dsen2cr-small"))
    return ["remove-clouds", "--weights", weights, "--s2", str(s2), "--s1", s1, "--out", str(tmp / "o.tif"), "-q"]


def _on_pass(path: Path, direction: str) -> Path:
    with rasterio.open(path, "r+") as dataset:
        dataset.update_tags(ORBIT_DIRECTION=direction)
    return path


def _two_passes(tmp: Path) -> list[str]:
    args = _remove(tmp, f"{tmp / FIRST}+{_frame(tmp, 'S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif')}")
    _on_pass(tmp / FIRST, "ASCENDING")
    _on_pass(tmp / "S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif", "DESCENDING")
    return args


CASES = [
    dict(
        name="remove-clouds: S1 frames sensed a day apart",
        setup=lambda t: _remove(t, f"{t / FIRST}+{_frame(t, 'S1A_IW_GRDH_1SDV_20230609T051259_x_db.tif')}"),
        message=(
            "_20230609T051259_x_db.tif: frames joined with + are slices of one pass, sensed minutes apart; these were "
            "sensed at 2023-06-08T05:12:34Z and 2023-06-09T05:12:59Z: give one pass's frames (the ground at one time)"
        ),
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 frame whose time nothing says",
        setup=lambda t: _remove(t, f"{t / FIRST}+{_frame(t, 'east.tif')}"),
        message="east.tif: when S1 was sensed is unknown (no metadata says it, nor a date and time such as",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S1 frames said to be of two passes",
        setup=_two_passes,
        message="the frames joined with + say different passes (ascending, descending)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 frame that is not there",
        setup=lambda t: _remove(t, f"{t / FIRST}+{t / 'S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif'}"),
        message="S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif: S1 scene not found",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 frame that does not overlap the scene",
        setup=lambda t: _remove(
            t, f"{t / FIRST}+{_frame(t, 'S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif', origin=(600000, 5000000))}"
        ),
        message="S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif: S1 does not overlap the S2 scene at all",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 frame in linear power among frames in dB",
        setup=lambda t: _remove(
            t, f"{t / FIRST}+{_frame(t, 'S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif', linear=True)}"
        ),
        message="S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif: S1 values look like linear power",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an empty S1 frame (a + at the end)",
        setup=lambda t: _remove(t, f"{t / FIRST}+"),
        message="_x_db.tif+: an empty frame; frames of one S1 pass are joined with + (frame1.tif+frame2.tif)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: one S1 frame given twice",
        setup=lambda t: _remove(t, f"{t / FIRST}+{t / FIRST}"),
        message="a frame given twice; frames of one S1 pass are joined with + once each",
        absent=("o.tif",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)
