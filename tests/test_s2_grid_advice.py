"""S2 on a grid the model was not trained on (longitude/latitude, 20 m pixels) is refused with the command that puts
it on one: the UTM zone of the scene's centre, worked out by hand here; that command, run as the message gives it
with rasterio's own CLI, makes a scene remove-clouds takes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff

RIO = str(Path(sys.executable).with_name("rio"))  # rasterio's CLI, installed with rasterio


def _advice(stderr: str, tool: str) -> list[str]:
    """The arguments of the ``tool`` command the refusal gives (``rio warp IN OUT …`` up to the comma or bracket)."""
    start = stderr.index(f"({tool} ") + 1
    end = min(i for i in (stderr.find(",", start), stderr.find(")", start)) if i > 0)
    return shlex.split(stderr[start:end])


def _remove(s2: Path, out: Path, weights: Path) -> int:
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(out), "--no-progress"]
    return main([*argv, "--device", "cpu"])


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [  # zone = floor((lon + 180) / 6) + 1, by hand; 326NN north, 327NN south
        (14.5, 52.0, 32633),  # Berlin: floor(32.42) + 1 = 33
        (18.4, -33.9, 32734),  # Cape Town: floor(33.07) + 1 = 34, south
        (-0.2, 51.5, 32630),  # London, just west of Greenwich: floor(29.97) + 1 = 30
        (179.95, 10.0, 32660),  # the last zone
        (-179.95, -10.0, 32701),  # the first, south
    ],
)
def test_lonlat_s2_is_refused_with_its_utm_zone(
    workdir: Path, capsys: pytest.CaptureFixture, lon: float, lat: float, epsg: int
) -> None:
    dn = np.random.default_rng(0).integers(200, 3000, (13, 40, 50)).astype(np.uint16)
    dn[10] = 20  # B10 of a clear sky
    transform = from_origin(lon - 25 * 0.0001, lat + 20 * 0.0001, 0.0001, 0.0001)  # centred on (lon, lat)
    s2 = write_geotiff(workdir / "s2_lonlat.tif", dn, crs=CRS.from_epsg(4326), transform=transform)
    weights = workdir.weights("dsen2cr-small-nosar")
    capsys.readouterr()
    assert _remove(s2, workdir / "out.tif", weights) == 2
    err = capsys.readouterr().err
    assert "s2_lonlat.tif: S2 is on a geographic CRS (EPSG:4326)" in err
    assert f"gdalwarp -t_srs EPSG:{epsg} -tr 10 10 IN OUT" in err
    rio = _advice(err, "rio")
    assert rio == ["rio", "warp", "IN", "OUT", "--dst-crs", f"EPSG:{epsg}", "--res", "10"]
    utm = workdir / "s2_utm.tif"
    subprocess.run([RIO, *rio[1:2], str(s2), str(utm), *rio[4:]], check=True)
    with rasterio.open(utm) as dataset:
        assert dataset.crs.to_epsg() == epsg and dataset.res == (10.0, 10.0)
    assert _remove(utm, workdir / "out.tif", weights) == 0


def test_s2_at_20_m_is_refused_with_the_command_that_resamples_it(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    dn = np.random.default_rng(0).integers(200, 3000, (13, 40, 50)).astype(np.uint16)
    dn[10] = 20
    s2 = write_geotiff(workdir / "s2_20m.tif", dn, crs=CRS.from_epsg(32632), transform=from_origin(5e5, 5e6, 20, 20))
    weights = workdir.weights("dsen2cr-small-nosar")
    capsys.readouterr()
    assert _remove(s2, workdir / "out.tif", weights) == 2
    err = capsys.readouterr().err
    assert "s2_20m.tif: S2 pixels are 20 x 20 m; the model works at 10 m" in err
    rio = _advice(err, "rio")
    assert rio == ["rio", "warp", "IN", "OUT", "--res", "10"]
    s2_10m = workdir / "s2_10m.tif"
    subprocess.run([RIO, "warp", str(s2), str(s2_10m), *rio[4:]], check=True)
    with rasterio.open(s2_10m) as dataset:
        assert (dataset.crs.to_epsg(), dataset.res, dataset.shape) == (32632, (10.0, 10.0), (80, 100))
    assert _remove(s2_10m, workdir / "out.tif", weights) == 0
