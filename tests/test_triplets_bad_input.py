"""Bad input to ``dsen2cr data triplets``, table-driven through the console entry point (the ``check_case``
fixture): each row is an unusual but plausible input; the command exits 2 with one line on stderr naming the file or
option and the problem, no traceback, inputs unchanged, no manifest left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import write_dated_s2
from dsen2cr.outputs.geotiff import write_geotiff

CLOUDY = "T32TPT_20230610T101559_10m.tif"
CLEAR = "T32TPT_20230601T101559_10m.tif"
S1_NAME = "S1A_IW_GRDH_1SDV_20230531T051234_20230531T051234_048901_05E1A2_3C4F_db.tif"


def _scenes(tmp: Path, *, clear: bool = True, cloudy: bool = True) -> list[Path]:
    """The cloudy scene of 10 June and the clear one of 1 June on one grid (as asked)."""
    return [write_dated_s2(tmp, 500000, "20230610T101559", cloud_columns=64)] * cloudy + [
        write_dated_s2(tmp, 500000, "20230601T101559")
    ] * clear


def _s1(tmp: Path, file: str = S1_NAME, *, left: int = 500000) -> Path:
    """S1 of the scenes' ground at 20 m (or of the ground whose left edge is ``left``), named ``file``."""
    db = np.stack([np.full((60, 80), -10.0), np.full((60, 80), -17.0)]).astype(np.float32)
    return write_geotiff(tmp / file, db, crs=CRS.from_epsg(32632), transform=from_origin(left, 5000000, 20, 20))


def _triplets(tmp: Path, s2: list[Path], s1: list[Path], *extra: str) -> list[str]:
    return ["data", "triplets", "--s2", *map(str, s2), "--s1", *map(str, s1), "--out", str(tmp / "pairs.csv"), *extra]


CASES = [
    dict(
        name="data triplets: an S2 scene whose date nothing says",
        setup=lambda t: _triplets(t, [*_scenes(t), t.scene()[0]], [_s1(t)]),
        message="s2.tif: when the scene was sensed is unknown (no metadata says it, nor a Sentinel-2 date and time "
        "such as 20170216T102101 in its name), so it cannot be paired with a scene by date; give the product itself",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: an S1 candidate whose date nothing says",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t), _s1(t, "s1.tif")]),
        message="s1.tif: when S1 was sensed is unknown",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: no scene cloudy enough to be an input",
        setup=lambda t: _triplets(t, _scenes(t, cloudy=False), [_s1(t)]),
        message="--s2: no triplet to write of the 1 scenes given: no scene is cloudy enough to be an input",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: no clear scene",
        setup=lambda t: _triplets(t, _scenes(t, clear=False), [_s1(t)]),
        message=f"{CLOUDY}: no clear scene (--clear: at most 5% cloud) of its grid and level was given",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: the clear scene lies beyond --max-days",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--max-days", "7"),
        message=f"{CLEAR}, lies 9.0 days before it (--max-days)",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: no S1 over the scenes",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t, left=600000)]),
        message=f"{CLOUDY} (S1 near its target ",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: one scene given twice",
        setup=lambda t: _triplets(t, [*_scenes(t), t / CLEAR], [_s1(t)]),
        message=f"{CLEAR}: the acquisition ",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: --relative-orbit same (pair's choice of one track for a series)",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--relative-orbit", "same"),
        message="--relative-orbit: relative orbit numbers (1 to 175); got 'same'",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: --orbit with a candidate whose pass nothing says",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--orbit", "descending"),
        message=f"{S1_NAME}: --orbit descending: on which pass S1 was sensed is unknown",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: --cloudy not above --clear",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--cloudy", "0.05"),
        message="--cloudy 0.05 must exceed --clear 0.05: a scene would be both an input and a target",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: --clear 5 (a percentage)",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--clear", "5"),
        message="--clear: must be a share in [0, 1], got 5",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: negative --max-days",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--max-days", "-1"),
        message="--max-days: must be 0 or more days, got -1",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: --first-roi 0",
        setup=lambda t: _triplets(t, _scenes(t), [_s1(t)], "--first-roi", "0"),
        message="--first-roi: must be 1 or more, got 0",
        absent=("pairs.csv",),
    ),
    dict(
        name="data triplets: an existing manifest without --overwrite",
        setup=lambda t: (t / "pairs.csv").write_text("s2_cloudy,s2,s1,roi\n") and _triplets(t, _scenes(t), [_s1(t)]),
        message="pairs.csv: exists; pass --overwrite to replace it",
        keep=("pairs.csv",),
    ),
    dict(
        name="data triplets: --out the clear scene, --overwrite",
        setup=lambda t: [*_triplets(t, _scenes(t), [_s1(t)])[:-2], "--out", str(t / CLEAR), "--overwrite"],
        message=f"{CLEAR}: output out would replace",
        keep=(CLEAR,),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)
