"""Bad input to remove-clouds, table-driven through the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import S1_GRD_NAME, split_s1, write_s1_item, write_s1_product, write_stac_item
from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.geotiff import polarisation
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.weights import save_weights

UTM32N = CRS.from_epsg(32632)


def _remove(tmp: Path, s2: Path, s1: Path | None, *extra: str, weights: Path | None = None) -> list[str]:
    args = [
        "remove-clouds",
        "--weights",
        str(weights or tmp.weights()),
        "--s2",
        str(s2),
        "--out",
        str(tmp / "out.tif"),
        "--no-progress",
        *extra,
    ]
    return args + (["--s1", str(s1)] if s1 is not None else [])


def _truncate(path: Path, keep: float = 0.4) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ORIGIN = from_origin(500000, 5000000, 10, 10)


def _manifest_with_bounds(tmp: Path, bounds: str, crs: str) -> list[str]:
    """remove-clouds of a manifest whose one row has these ``bounds`` and ``bounds_crs`` fields."""
    s2, _ = tmp.scene()
    (tmp / "scenes.csv").write_text(f"s2,out,bounds,bounds_crs\n{s2.name},o.tif,{bounds},{crs}\n")
    weights = str(tmp.weights("dsen2cr-small-nosar"))
    return ["remove-clouds", "--weights", weights, "--manifest", str(tmp / "scenes.csv"), "--no-progress"]


def _bounds_miss_the_second_scene(tmp: Path) -> list[str]:
    """Two scenes 10 km apart, and --bounds that cover all of the first."""
    s2, _ = tmp.scene()
    with rasterio.open(s2) as scene:
        write_geotiff(tmp / "far.tif", scene.read(), crs=UTM32N, transform=from_origin(510000, 5000000, 10, 10))
    (tmp / "outdir").mkdir()
    args = _remove_args(tmp, "--out", str(tmp / "outdir"), "--bounds", *["500000", "4999600", "500500", "5000000"])
    return [*args, "--s2", str(s2), str(tmp / "far.tif")]


def _remove_args(tmp: Path, *extra: str, s1: bool = False, weights: Path | None = None) -> list[str]:
    """remove-clouds over the small test scene (without SAR unless ``s1``)."""
    s2, s1_path = tmp.scene()
    variant = "dsen2cr-small" if s1 else "dsen2cr-small-nosar"
    args = ["remove-clouds", "--weights", str(weights or tmp.weights(variant)), "--s2", str(s2), "--no-progress"]
    return args + (["--s1", str(s1_path)] if s1 else []) + list(extra)


def _two_scenes_one_name(tmp: Path) -> list[str]:
    s2, _ = tmp.scene()
    for folder in ("A", "B"):
        (tmp / folder).mkdir()
        (tmp / folder / "scene.tif").write_bytes(s2.read_bytes())
    (tmp / "outdir").mkdir()
    weights = tmp.weights("dsen2cr-small-nosar")
    return [
        "remove-clouds",
        "--weights",
        str(weights),
        "--s2",
        str(tmp / "A/scene.tif"),
        str(tmp / "B/scene.tif"),
        "--out",
        str(tmp / "outdir"),
        "--no-progress",
    ]


def _manifest(tmp: Path, rows: list[tuple[str, str, str]], name: str = "m.csv", bom: bool = False) -> Path:
    text = "s2,s1,out\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    path = tmp / name
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _manifest_header_args(tmp: Path, header: str, row: str) -> list[str]:
    """remove-clouds over a manifest ``m.csv`` of this header and one row (the small scene, no SAR)."""
    tmp.scene()
    (tmp / "m.csv").write_text(f"{header}\n{row}\n")
    weights = str(tmp.weights("dsen2cr-small-nosar"))
    return ["remove-clouds", "--weights", weights, "--manifest", str(tmp / "m.csv"), "--no-progress"]


def _manifest_args(tmp: Path, rows: list[tuple[str, str, str]], *extra: str) -> list[str]:
    tmp.scene()
    weights = tmp.weights("dsen2cr-small-nosar")
    manifest = _manifest(tmp, rows)
    return ["remove-clouds", "--weights", str(weights), "--manifest", str(manifest), "--no-progress", *extra]


def _existing(tmp: Path, name: str, content: bytes = b"keep me") -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _nan_weights(tmp: Path, variant: str = "dsen2cr-small-nosar") -> Path:
    model = create_model(variant)
    with torch.no_grad():
        model.blocks[0].conv1.weight[0, 0, 0, 0] = float("nan")
    return save_weights(model, tmp / "nan.safetensors")


def _huge_weights(tmp: Path) -> Path:
    """Finite weights whose output overflows float32."""
    model = create_model("dsen2cr-small-nosar")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1e12)
    return save_weights(model, tmp / "huge.safetensors")


def _foreign_onnx(tmp: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def _s2_file(
    tmp: Path,
    array: np.ndarray | None = None,
    transform: object = ORIGIN,
    names: list[str] | None = None,
    crs: object = UTM32N,
) -> Path:
    array = np.random.default_rng(0).integers(1, 8000, (13, 40, 50)).astype(np.uint16) if array is None else array
    return write_geotiff(tmp / "s2x.tif", array, crs=crs, transform=transform, band_names=names)


def _s1_file(tmp: Path, array: np.ndarray, crs: object = UTM32N) -> Path:
    return write_geotiff(tmp / "s1x.tif", array, crs=crs, transform=ORIGIN)


def _uint16_pair(tmp: Path) -> str:
    """A VV,VH pair of uint16 files (amplitude DN: what a GRD product's measurement files hold, renamed)."""
    amplitude = np.random.default_rng(2).integers(50, 400, (2, 40, 50)).astype(np.uint16)
    return split_s1(_s1_file(tmp, amplitude), "s1_vv.tif", "s1_vh.tif")


def _s1_radar_geometry(tmp: Path) -> Path:
    """S1 in dB as SNAP writes a calibrated product not yet terrain-corrected: float32 VV and VH with ground
    control points (longitude/latitude) and no map grid."""
    from rasterio.control import GroundControlPoint

    corners = [(0, 0, 9.0, 45.1), (0, 49, 9.5, 45.1), (39, 0, 9.0, 44.9), (39, 49, 9.5, 44.9)]
    gcps = [GroundControlPoint(row, col, x, y, 0.0) for row, col, x, y in corners]
    profile = dict(driver="GTiff", width=50, height=40, count=2, dtype="float32", gcps=gcps, crs="EPSG:4326")
    with rasterio.open(tmp / "s1_sigma0_db.tif", "w", **profile) as dataset:
        dataset.write(np.stack([np.full((40, 50), -10.0), np.full((40, 50), -17.0)]).astype(np.float32))
    return tmp / "s1_sigma0_db.tif"


def _grd_item(tmp: Path) -> Path:
    """An S1 STAC item of the Planetary Computer's sentinel-1-grd collection (vv and vh assets beside it)."""
    import json

    item = write_s1_item(tmp.scene()[1], "grd_item.json", datetime="2017-02-16T05:12:34Z")
    item.write_text(json.dumps({**json.loads(item.read_text()), "collection": "sentinel-1-grd"}))
    return item


def _expired_s1_item(tmp: Path) -> Path:
    """An S1 STAC item whose vv and vh hrefs are S3 presigned URLs (SigV4) that expired an hour after signing."""
    import json

    query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20260105T094500Z&X-Amz-Expires=3600&X-Amz-Signature=ab12"
    base = "https://s1-rtc.s3.eu-central-1.amazonaws.com/2026/1/5/IW/DV"
    assets = {name: {"href": f"{base}/iw-{name}.tiff?{query}"} for name in ("vv", "vh")}
    item = {"type": "Feature", "id": "S1A_IW_GRDH_1SDV_20260105", "properties": {}, "assets": assets}
    (tmp / "s1_rtc.json").write_text(json.dumps(item))
    return tmp / "s1_rtc.json"


def _s2_product_folder(tmp: Path) -> Path:
    """A Level-1C product folder, as named and laid out by ESA (its metadata only: enough to be known)."""
    folder = tmp / "S2B_MSIL1C_20170216T102101_N0204_R065_T32TPT_20170216T102101.SAFE"
    folder.mkdir()
    (folder / "MTD_MSIL1C.xml").write_text("<n1:Level-1C_User_Product/>")
    return folder


def _remove_with(tmp: Path, s2: Path, s1: Path | None = None) -> list[str]:
    variant = "dsen2cr-small" if s1 is not None else "dsen2cr-small-nosar"
    args = ["remove-clouds", "--weights", str(tmp.weights(variant)), "--s2", str(s2), "--out", str(tmp / "o.tif")]
    return args + ["--no-progress"] + (["--s1", str(s1)] if s1 is not None else [])


def _pixels(path: Path) -> np.ndarray:
    """An output's pixels (its tags name its inputs, so two runs on copies differ in bytes, not in pixels)."""
    import rasterio

    with rasterio.open(path) as dataset:
        return dataset.read()


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.tif")
    return tmp / "pipe.tif"


def _second_exists(tmp: Path) -> list[str]:
    _existing(tmp, "o2.tif")
    return _manifest_args(tmp, [("s2.tif", "", "o1.tif"), ("s2.tif", "", "o2.tif")])


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
CASES = [
    dict(
        name="remove-clouds: S2 with 11 bands",
        setup=lambda t: _remove(t, t.scene(s2=np.ones((11, 40, 50), np.uint16))[0], t / "s1.tif"),
        message="s2.tif: S2 has 11 bands, expected 13 (L1C",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 with 3 bands",
        setup=lambda t: _remove(t, *t.scene(s1=np.full((3, 40, 50), -10, np.float32))),
        message="s1.tif: S1 (VV, VH) has 3 bands, expected 2",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 of one polarisation (a VV file alone)",
        setup=lambda t: _remove(t, *t.scene(s1=np.full((1, 40, 50), -10, np.float32))),
        message="s1.tif: S1 (VV, VH) has 1 band, expected 2; one polarisation a file: give the two as one S1 pair, "
        "VV.tif,VH.tif",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: zero-byte S2",
        setup=lambda t: _remove(t, _write(t / "empty.tif", ""), t.scene()[1]),
        message="empty.tif: cannot read S2",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: truncated S2",
        setup=lambda t: _remove(t, _truncate(t.scene()[0]), t / "s1.tif"),
        message="s2.tif: cannot read",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S2 in reflectance, not DN",
        setup=lambda t: _remove(t, t.scene(s2=np.full((13, 40, 50), 0.2, np.float32))[0], t / "s1.tif"),
        message="s2.tif: S2 values look like reflectance",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: all-NaN S2",
        setup=lambda t: _remove(t, t.scene(s2=np.full((13, 40, 50), np.nan, np.float32))[0], t / "s1.tif"),
        message="s2.tif: S2 has no valid pixels",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: all-nodata S1",
        setup=lambda t: _remove(t, *t.scene(s1=np.full((2, 40, 50), np.nan, np.float32))),
        message="s1.tif: S1 holds no valid values",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 in linear power",
        setup=lambda t: _remove(t, *t.scene(s1=np.full((2, 40, 50), 0.05, np.float32))),
        message="pass --s1-linear",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: an ASF HyP3 RTC product in amplitude (its name's scale letter: a) as a VV,VH pair",
        setup=lambda t: _remove(t, t.scene()[0], _hyp3_amplitude_pair(t)),
        message="S1A_IW_20230608T051234_DVP_RTC10_G_gauned_5F3A_VV.tif: an ASF HyP3 RTC product in amplitude (the "
        "'a' of gauned); --s1 takes sigma0 in dB, and --s1-linear linear power: make the product again with scale "
        "decibel (or power, with --s1-linear)",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: an ASF HyP3 RTC product in amplitude with --s1-linear (read as power: dB halved)",
        setup=lambda t: _remove(t, t.scene()[0], _hyp3_amplitude_pair(t), "--s1-linear"),
        message="S1A_IW_20230608T051234_DVP_RTC10_G_gauned_5F3A_VV.tif: an ASF HyP3 RTC product in amplitude",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 in dB with --s1-linear",
        setup=lambda t: _remove(t, *t.scene(), "--s1-linear"),
        message="s1.tif: S1 given as linear power (--s1-linear), but it holds negative values (median -",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 with VH in band 1 and VV in band 2 (no band names)",
        setup=lambda t: _remove(t, *t.scene(s1=_swapped_db())),
        message="s1.tif: S1 band 2 is brighter than band 1 (median band 1 - band 2: -6.0 dB",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: an S1 pair given VH first (neutral names)",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", s1=_s1_pair(t, ("a.tif", "b.tif"), db=True), sar=True),
        message="S1 band 2 is brighter than band 1",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAR weights without --s1",
        setup=lambda t: _remove(t, t.scene()[0], None),
        message="these weights need SAR input; pass --s1",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: output exists",
        setup=lambda t: _remove(t, *t.scene()) if _write(t / "out.tif", "keep") else [],
        message="out.tif: exists; pass --overwrite",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: output folder is missing",
        setup=lambda t: [*_remove(t, *t.scene())[:-2], "--out", str(t / "no" / "out.tif"), "--s1", str(t / "s1.tif")],
        message="output folder",
        absent=("no/out.tif",),
    ),
    dict(
        name="remove-clouds: zero batch size",
        setup=lambda t: _remove(t, *t.scene(), "--batch-size", "0"),
        message="--batch-size: must be at least 1",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: tile too small",
        setup=lambda t: _remove(t, *t.scene(), "--tile", "8"),
        message="tile: must be at least 16 pixels",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a directory as S1",
        setup=lambda t: _remove(t, t.scene()[0], t),
        message="is a directory, expected a S1",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-1 GRD product (.SAFE folder) as S1",
        setup=lambda t: _remove(t, t.scene()[0], write_s1_product(t)),
        message=f"{S1_GRD_NAME}.SAFE: a Sentinel-1 Level-1 GRD product (amplitude in radar geometry);",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a zipped Sentinel-1 GRD product (.SAFE.zip, as the Copernicus Data Space delivers it)",
        setup=lambda t: _remove(t, t.scene()[0], write_s1_product(t, zipped=True)),
        message="SAFE.zip: a Sentinel-1 Level-1 GRD product (amplitude in radar geometry); --s1 takes VV and VH",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a zipped Sentinel-1 GRD product named without .SAFE (ASF's)",
        setup=lambda t: _remove(t, t.scene()[0], write_s1_product(t, suffix="", zipped=True)),
        message="5C2F.zip: a Sentinel-1 Level-1 GRD product",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-1 SLC product as S1",
        setup=lambda t: _remove(t, t.scene()[0], write_s1_product(t, S1_GRD_NAME.replace("GRDH", "SLC_"))),
        message="a Sentinel-1 Level-1 SLC product (complex values in radar geometry)",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a renamed Sentinel-1 product folder (manifest.safe, measurement/) as S1",
        setup=lambda t: _remove(t, t.scene()[0], write_s1_product(t).rename(t / "my_s1")),
        message="my_s1: a Sentinel-1 product (amplitude or complex values in radar geometry)",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-1 GRD product's measurement file as S1",
        setup=lambda t: _remove(t, t.scene()[0], next((write_s1_product(t) / "measurement").glob("*-vv-*"))),
        message="-001.tiff: a measurement file of a Sentinel-1 Level-1 GRD product (amplitude in radar geometry)",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-1 GRD product's measurement files as a VV,VH pair",
        setup=lambda t: _remove(
            t,
            t.scene()[0],
            ",".join(map(str, sorted((write_s1_product(t) / "measurement").glob("*.tiff"), reverse=True))),
        ),
        message="-001.tiff: a measurement file of a Sentinel-1 Level-1 GRD product",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: an S1 STAC item of sentinel-1-grd (its assets: amplitude in radar geometry)",
        setup=lambda t: _remove(t, t.scene()[0], _grd_item(t)),
        message="grd_item.json: an item of sentinel-1-grd (Level-1 GRD: amplitude in radar geometry); --s1 takes VV",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a zipped Sentinel-1 product given as --s2 (the two inputs swapped)",
        setup=lambda t: _remove(t, write_s1_product(t, zipped=True), t.scene()[1], weights=t.weights("dsen2cr-small")),
        message="SAFE.zip: a Sentinel-1 Level-1 GRD product (amplitude in radar geometry) given as --s2; --s2 takes "
        "the Sentinel-2 scene, --s1 its S1",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-1 product folder given as --s2",
        setup=lambda t: _remove(t, write_s1_product(t), None, weights=t.weights("dsen2cr-small-nosar")),
        message=".SAFE: a Sentinel-1 Level-1 GRD product (amplitude in radar geometry) given as --s2",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: a Sentinel-2 product folder given as --s1 (the two inputs swapped)",
        setup=lambda t: _remove(t, t.scene()[0], _s2_product_folder(t)),
        message="S2B_MSIL1C_20170216T102101_N0204_R065_T32TPT_20170216T102101.SAFE: a Sentinel-2 product given as "
        "--s1; --s1 takes VV and VH backscatter",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: an S1 STAC item whose assets' signed URLs expired (a search saved yesterday)",
        setup=lambda t: _remove(t, t.scene()[0], _expired_s1_item(t)),
        message="s1_rtc.json: the signed URLs of its assets expired at 2026-01-05T10:45:00Z; save the search again",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: S1 in dB georeferenced by ground control points only (radar geometry)",
        setup=lambda t: _remove(t, t.scene()[0], _s1_radar_geometry(t)),
        message="s1_sigma0_db.tif: S1 is in radar geometry (ground control points, no map grid): terrain-correct it",
        absent=("out.tif",),
    ),
    dict(
        name="remove-clouds: --preview is --out",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--preview", str(t / "o.tif")),
        message="would replace output out",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --mask-statistics area with --mask product (which has no statistics)",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--mask", "product", "--mask-statistics", "area", "--keep-clear"
        ),
        message="--mask-statistics: is for --mask paper's shadow thresholds; --mask product has none",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --mask-out is --out",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--mask-out", str(t / "o.tif")),
        message="would replace output out",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --out is the S2 input",
        setup=lambda t: _remove_args(t, "--out", str(t / "s2.tif"), "--overwrite"),
        message="would replace input s2",
        keep=("s2.tif",),
    ),
    dict(
        name="remove-clouds: --out is the weights",
        setup=lambda t: _remove_args(t, "--out", str(t.weights("dsen2cr-small-nosar")), "--overwrite"),
        message="would replace input weights",
        keep=("dsen2cr-small-nosar.safetensors",),
    ),
    dict(
        name="remove-clouds: two scenes of one name",
        setup=_two_scenes_one_name,
        message="would replace output out",
        absent=("outdir/scene_cloudfree.tif",),
    ),
    dict(
        name="remove-clouds: two manifest rows, one out",
        setup=lambda t: _manifest_args(t, [("s2.tif", "", "o.tif"), ("s2.tif", "", "o.tif")]),
        message="would replace output out",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: manifest row 2 exists, row 1 not written",
        setup=lambda t: _second_exists(t),
        message="o2.tif: exists; pass --overwrite",
        keep=("o2.tif",),
        absent=("o1.tif",),
    ),
    dict(
        name="remove-clouds: manifest writes over itself",
        setup=lambda t: _manifest_args(t, [("s2.tif", "", "m.csv")], "--overwrite"),
        message="would replace input file",
        keep=("m.csv",),
    ),
    dict(
        name="remove-clouds: manifest row 2 missing",
        setup=lambda t: _manifest_args(t, [("s2.tif", "", "o1.tif"), ("nope.tif", "", "o2.tif")]),
        message="nope.tif: S2 scene not found",
        absent=("o1.tif",),
    ),
    dict(
        name="remove-clouds: weights with a NaN",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_nan_weights(t)),
        message="holds NaN or infinite values",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: predictions overflow",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_huge_weights(t)),
        message="predicted NaN, infinite or absurdly large values",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --memory inf",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--memory", "inf"),
        message="expected a finite number",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S1 as uint16 amplitude",
        setup=lambda t: _remove_with(t, _s2_file(t), _s1_file(t, np.full((2, 40, 50), 200, np.uint16))),
        message="S1 is uint16; expected float dB",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 pair of uint16 files (integer amplitude, one polarisation a file)",
        setup=lambda t: _remove_with(t, _s2_file(t), _uint16_pair(t)),
        message="S1 is uint16; expected float dB",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S1 of float32 digital numbers (50 to 400: amplitude, not dB)",
        setup=lambda t: _remove_with(
            t, _s2_file(t), _s1_file(t, np.random.default_rng(1).uniform(50, 400, (2, 40, 50)).astype(np.float32))
        ),
        message="s1x.tif: S1 values do not look like dB (median ",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: complex S1",
        setup=lambda t: _remove_with(t, _s2_file(t), _s1_file(t, np.ones((2, 40, 50), np.complex64))),
        message="S1 is complex64",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S2 with an identity transform",
        setup=lambda t: _remove_with(t, _s2_file(t, transform=__import__("rasterio").Affine.identity())),
        message="no georeferencing",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S2 band descriptions that name B04 twice (and no B03)",
        setup=lambda t: _remove_with(
            t,
            _s2_file(
                t, names=["B01", "B02", "B04", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
            ),
        ),
        message="s2x.tif: band descriptions name B04 twice (bands 3 and 4)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a 16-band export whose band descriptions name no B8A (Earth Engine's, three QA bands)",
        setup=lambda t: _remove_with(
            t,
            _s2_file(
                t,
                np.random.default_rng(0).integers(1, 8000, (16, 40, 50)).astype(np.uint16),
                names=[*(f"B{n}" for n in range(1, 13)), "QA10", "QA20", "QA60", "X"],
            ),
        ),
        message="s2x.tif: S2 has 16 bands, expected 13 (L1C: B1 ... B12, B8A) or 12 (L2A: the same without B10); its "
        "band descriptions name B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, not B8A",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: complex S2",
        setup=lambda t: _remove_with(t, _s2_file(t, np.ones((13, 40, 50), np.complex64))),
        message="S2 is complex64",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S1 in a local engineering CRS",
        setup=lambda t: _remove_with(
            t,
            _s2_file(t),
            _s1_file(t, np.full((2, 40, 50), -12, np.float32), crs=CRS.from_wkt('LOCAL_CS["local",UNIT["metre",1]]')),
        ),
        message="cannot be related to the S2 scene",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S2 is a FIFO",
        setup=lambda t: _remove_with(t, _fifo(t)),
        message="not a regular file",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: weights are /dev/zero",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=Path("/dev/zero")),
        message="not a regular file",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --device foo",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--device", "foo"),
        message="'foo' is not a torch device",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an ONNX file from elsewhere",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_foreign_onnx(t)),
        message="ONNX inputs ['x']",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds-crs without --bounds",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--bounds-crs", "EPSG:4326"),
        message="--bounds-crs: says what --bounds are in; give --bounds LEFT BOTTOM RIGHT TOP",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds with left and right swapped",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["500300", "4999700", "500100", "4999900"]
        ),
        message="--bounds: expected LEFT BOTTOM RIGHT TOP with left < right and bottom < top, got 500300 4999700",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds of another place",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["400000", "4999700", "400100", "4999900"]
        ),
        message="s2.tif: --bounds 400000 4999700 400100 4999900 lie outside the scene, which covers 500000 4999600 "
        "500500 5000000 in EPSG:32632",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds in longitude/latitude of another place",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["11.5", "48.1", "11.6", "48.2"], "--bounds-crs", "EPSG:4326"
        ),
        message="s2.tif: --bounds 11.5 48.1 11.6 48.2 (EPSG:4326) lie outside the scene, which covers 9.00000 45.",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds latitude and longitude swapped",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["45.1", "9.0", "45.2", "9.1"], "--bounds-crs", "EPSG:4326"
        ),
        message="lie outside the scene",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds latitude beyond 90",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["9", "45", "10", "95"], "--bounds-crs", "EPSG:4326"
        ),
        message="--bounds: 9 45 10 95 are no longitudes and latitudes of EPSG:4326",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds-crs that is no CRS",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--bounds", *["0", "0", "1", "1"], "--bounds-crs", "EPSG:4326x"
        ),
        message="--bounds-crs: 'EPSG:4326x' is not a coordinate reference system",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds with three numbers",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--bounds", "0", "0", "1"),
        message="argument --bounds: expected 4 arguments",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds nan",
        setup=lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--bounds", "nan", "0", "1", "1"),
        message="argument --bounds: expected a finite number, got 'nan'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row's bounds of three numbers",
        setup=lambda t: _manifest_with_bounds(t, "500000 4999600 500500", ""),
        message="scenes.csv:2: bounds: expected four finite numbers LEFT BOTTOM RIGHT TOP, got [500000.0",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row's bounds that are no numbers",
        setup=lambda t: _manifest_with_bounds(t, "west south east north", ""),
        message="scenes.csv:2: bounds: expected four numbers LEFT BOTTOM RIGHT TOP, got 'west south east north'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row's bounds of another place",
        setup=lambda t: _manifest_with_bounds(t, "0 0 10 10", ""),
        message="scenes.csv:2: bounds 0 0 10 10 lie outside the scene, which covers 500000 4999600 500500 5000000",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row's bounds_crs without bounds",
        setup=lambda t: _manifest_with_bounds(t, "", "EPSG:4326"),
        message="scenes.csv:2: bounds_crs says what the row's bounds are in; give its bounds too",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row's bounds_crs that is no CRS",
        setup=lambda t: _manifest_with_bounds(t, "9 45 10 46", "EPSG:43260"),
        message="scenes.csv:2: bounds_crs: 'EPSG:43260' is not a coordinate reference system",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --bounds that miss the second of two scenes: refused before the first",
        setup=_bounds_miss_the_second_scene,
        message="far.tif: --bounds 500000 4999600 500500 5000000 lie outside the scene",
        absent=("outdir/s2_cloudfree.tif", "outdir/far_cloudfree.tif"),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)


def test_minus_infinity_in_s1_is_no_data(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s1 = np.random.default_rng(1).uniform(-25, -5, (2, 40, 50)).astype(np.float32)
    s1[:, :, :25] = -np.inf
    args = _remove_with(workdir, _s2_file(workdir), _s1_file(workdir, s1))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "S1 has no data under 50.0% of the valid S2 pixels" in err
    hint = "where a scene lies across frames of one S1 pass, give them joined with + (frame1.tif+frame2.tif), as"
    assert f"{hint} dsen2cr pair joins them" in err


@pytest.mark.parametrize(
    "names",
    [("VV", "VH", "angle"), ("VH", "VV"), ("angle", "Sigma0_VH_db", "Sigma0_VV_db")],
    ids=["Earth Engine's export with its angle band", "VH first", "SNAP's names after an angle band"],
)
def test_s1_bands_are_read_by_their_descriptions(workdir: Path, names: tuple[str, ...]) -> None:
    """An S1 file whose band descriptions name VV and VH is read by them, in any order and beside other bands
    (Earth Engine's COPERNICUS/S1_GRD exported whole holds VV, VH and angle): the output of the file of VV, VH (it
    was refused: 3 bands; descriptions VH, VV)."""
    s2 = _s2_file(workdir)
    rng = np.random.default_rng(8)
    vv, vh, angle = rng.uniform(-14, -8, (40, 50)), rng.uniform(-22, -16, (40, 50)), rng.uniform(30, 46, (40, 50))
    planes = {"VV": vv, "VH": vh}
    stacked = np.stack([planes.get(polarisation(n) or "", angle) for n in names]).astype(np.float32)
    described = write_geotiff(workdir / "described.tif", stacked, crs=UTM32N, transform=ORIGIN, band_names=list(names))
    plain = _s1_file(workdir, np.stack([vv, vh]).astype(np.float32))
    assert main([*_remove_with(workdir, s2, plain), "--overwrite"]) == 0
    expected = _pixels(workdir / "o.tif")
    assert main([*_remove_with(workdir, s2, described), "--overwrite"]) == 0
    np.testing.assert_array_equal(_pixels(workdir / "o.tif"), expected)


def test_swapped_s1_bands_that_the_files_name_are_taken_as_named(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Band 2 brighter than band 1 by 6 dB, in a file whose band descriptions say VV, VH, and in an S1 STAC item's
    vv and vh assets: taken as named, with a warning (the names are the user's word); real-like S1, VV above VH,
    passes without one."""
    import json

    import rasterio

    s2 = _s2_file(workdir)
    described = _s1_file(workdir, _swapped_db())
    with rasterio.open(described, "r+") as dataset:
        dataset.descriptions = ("VV", "VH")
    for name, band in (("vv", 0), ("vh", 1)):
        write_geotiff(workdir / f"{name}.tif", _swapped_db()[band : band + 1], crs=UTM32N, transform=ORIGIN)
    item = {"type": "Feature", "id": "s1", "properties": {}, "assets": {n: {"href": f"{n}.tif"} for n in ("vv", "vh")}}
    (workdir / "s1.json").write_text(json.dumps(item))
    for s1 in (described, workdir / "s1.json"):
        capsys.readouterr()
        assert main([*_remove_with(workdir, s2, s1), "--overwrite"]) == 0
        err = capsys.readouterr().err
        assert "S1 band 2 is brighter than band 1 (median band 1 - band 2: -6.0 dB" in err
        assert "taken as named (VV, VH)" in err
    assert main([*_remove_with(workdir, s2, _s1_file(workdir, _swapped_db()[::-1].copy())), "--overwrite"]) == 0
    assert "brighter" not in capsys.readouterr().err


def test_s2_in_an_engineering_crs_runs(workdir: Path) -> None:
    """S2 on a local engineering CRS in metres runs as before: its ground cannot be related to longitude and latitude,
    so only its pixels' size in its own units is checked (the ground check of Web Mercator's stretch stopped it with
    an internal error)."""
    s2 = _s2_file(workdir, crs=CRS.from_wkt('LOCAL_CS["local",UNIT["metre",1]]'))
    assert main(_remove_with(workdir, s2)) == 0


def test_zero_in_s1_without_a_declared_nodata_is_no_data(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Exports fill S1 outside its swath with 0 and often declare no nodata (Earth Engine; SNAP's no-data value
    is 0): 0.0 dB exactly is a fill, not a bright target (it was fed to the network as 0 dB). Taken as no data:
    the output equals the run on the same S1 with NaN there, and the missing share is warned; on S1 warped onto
    the grid too, where 0 was blended into its neighbours."""
    s1 = np.random.default_rng(1).uniform(-25, -5, (2, 40, 50)).astype(np.float32)
    s2 = _s2_file(workdir)
    runs = {}
    for name, fill in (("zero", 0.0), ("nan", np.nan)):
        filled = s1.copy()
        filled[:, :, :25] = fill
        for warped in (False, True):
            # warped: the same values on a grid 1 m off the scene's, so the S1 is resampled onto it
            origin = from_origin(500001 if warped else 500000, 5000000, 10, 10)
            path = write_geotiff(workdir / f"s1{name}{warped}.tif", filled, crs=UTM32N, transform=origin)
            out = workdir / f"o{name}{warped}.tif"
            weights = str(workdir.weights("dsen2cr-small"))
            argv = ["remove-clouds", "--weights", weights, "--s2", str(s2), "--s1", str(path), "--out", str(out)]
            capsys.readouterr()
            assert main([*argv, "--no-progress"]) == 0
            assert "S1 has no data under 5" in capsys.readouterr().err
            runs[name, warped] = _pixels(out)
    np.testing.assert_array_equal(runs["zero", False], runs["nan", False])
    np.testing.assert_array_equal(runs["zero", True], runs["nan", True])


def test_manifest_headers_in_any_case_and_spacing(workdir: Path) -> None:
    """A manifest header is read whatever its case and spaces around names (' S2 , OUT ' as spreadsheets
    write them): the scene is written (today: 'manifest header lacks out, s2')."""
    argv = _manifest_header_args(workdir, " S2 , OUT , Mask_Out", "s2.tif,o.tif,m.tif")
    assert main(argv) == 0
    assert (workdir / "o.tif").is_file() and (workdir / "m.tif").is_file()


def test_a_band_file_in_another_crs_is_refused(workdir: Path) -> None:
    """A product folder whose B06 declares another CRS with the same transform numbers is refused (it was read
    as if it were on the B02 grid)."""
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.preprocessing import S2_BANDS

    folder = workdir / "IMG_DATA"
    folder.mkdir()
    for band in S2_BANDS:
        code = band[0] + band[1:].zfill(2)
        crs = CRS.from_epsg(32633) if code == "B06" else UTM32N
        data = np.full((1, 40, 50), 100, np.uint16)
        write_geotiff(folder / f"T32TXX_20200101T000000_{code}.tif", data, crs=crs, transform=ORIGIN)
    with pytest.raises(DSen2CRError, match=r"B06\.tif: S2 band is on EPSG:32633, but B02 of"):
        S2Source(folder)


def test_boms_and_relative_manifest_paths(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A UTF-8 BOM in a manifest, file list or ROI list is read; manifest paths are relative to its folder."""
    from dsen2cr.data.layout import read_file_list, read_roi_list

    scenes = workdir / "scenes"
    scenes.mkdir()
    scenes.scene()
    manifest = _manifest(scenes, [("s2.tif", "", "clear.tif")], bom=True)
    weights = workdir.weights("dsen2cr-small-nosar")
    assert main(["remove-clouds", "--weights", str(weights), "--manifest", str(manifest), "--no-progress"]) == 0
    assert (scenes / "clear.tif").is_file()
    root = workdir.tree()
    bom_list = _write(workdir / "bom.csv", "\ufeff" + (root / "files.csv").read_text())
    assert len(read_file_list(bom_list, root)) == 3
    assert read_roi_list(_write(workdir / "rois.txt", "\ufeffROIs1158_spring/1\n")) == {"ROIs1158_spring/1"}


def test_overlap_below_exact_and_unmatched_rois_are_warned(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    args = _remove_args(workdir, "--out", str(workdir / "o.tif"), "--overlap", "4", "--tile", "32")
    assert main(args) == 0
    assert "overlap 4 px is below the exact 20 px" in capsys.readouterr().err
    rois = _write(workdir / "val.txt", "ROIs1158_spring/77\n")
    assert main(["data", "index", str(workdir.tree()), "--out", str(workdir / "n.csv"), "--val-rois", str(rois)]) == 0
    assert "1 ROI(s) of the validation list match no patch" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_during_remove_clouds_leaves_nothing(
    workdir: Path, terminate_when: Callable[..., int], private_tmp_env: dict[str, str]
) -> None:
    rng = np.random.default_rng(0)
    s2 = write_geotiff(
        workdir / "s2.tif", rng.integers(1, 8000, (13, 1024, 1024)).astype(np.uint16), crs=UTM32N, transform=ORIGIN
    )
    weights = workdir.weights("dsen2cr-small-nosar")
    out = workdir / "out"
    out.mkdir()
    command = [
        "remove-clouds",
        "--weights",
        str(weights),
        "--s2",
        str(s2),
        "--out",
        str(out / "clear.tif"),
        "--no-progress",
        "--tile",
        "128",
    ]
    status = terminate_when(command, lambda: any(out.glob(".clear.*staging*")), private_tmp_env)
    assert status == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []


# ------------------------------------------------------------- round 3 (issue #30): inputs no table had tried


def _remove_to(
    tmp: Path, s2: Path | str, out: Path | str, *extra: str, s1: Path | str | None = None, sar: bool = False
) -> list[str]:
    """remove-clouds of ``s2`` (and ``s1``) into ``out``, with fresh small weights (with SAR when ``sar``)."""
    weights = tmp.weights("dsen2cr-small" if sar else "dsen2cr-small-nosar")
    args = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(out), "--no-progress"]
    return args + (["--s1", str(s1)] if s1 is not None else []) + list(extra)


def _stac_s2(tmp: Path, folder: str = "stac", **raster_bands: object) -> Path:
    """A STAC item of the test scene (:func:`conftest.write_stac_item`) in ``folder``, its assets' ``raster:bands``
    ``raster_bands`` (none when empty)."""
    return write_stac_item(tmp.scene()[0], tmp / folder, raster_bands=raster_bands or None)


def _stac_s1(tmp: Path) -> Path:
    """An S1 STAC item with vv and vh assets (single-band GeoTIFFs on the scene's grid)."""
    import json

    rng = np.random.default_rng(2)
    for name in ("vv", "vh"):
        write_geotiff(
            tmp / f"{name}.tif", rng.uniform(-25, -5, (1, 40, 50)).astype(np.float32), crs=UTM32N, transform=ORIGIN
        )
    item = {
        "type": "Feature",
        "id": "s1",
        "properties": {},
        "assets": {"vv": {"href": "vv.tif"}, "vh": {"href": "vh.tif"}},
    }
    (tmp / "s1.json").write_text(json.dumps(item))
    return tmp / "s1.json"


def _safe_with_metadata(tmp: Path, find: str, replace: str, **options: object) -> Path:
    """A SAFE product whose metadata has ``find`` replaced by ``replace``."""
    safe = tmp.safe("p", **options)
    metadata = next(safe.glob("MTD_MSIL*.xml"))
    text = metadata.read_text()
    assert find in text, find
    metadata.write_text(text.replace(find, replace))
    return safe


def _zip_of_two_safes(tmp: Path) -> Path:
    import zipfile

    first, second = tmp.safe("a"), tmp.safe("b", baseline="05.10", offsets={i: -1000 for i in range(13)})
    archive = tmp / "two.SAFE.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for index, safe in enumerate((first, second)):
            for path in safe.rglob("*"):
                if path.is_file():
                    z.write(path, f"{index}/{safe.name}/{path.relative_to(safe)}")
    return archive


def _l2a_with_scl(tmp: Path, *, shift_m: float = 0, crs: CRS | None = None, size: int = 30) -> Path:
    """A tiny Level-2A SAFE whose SCL (20 m) is moved by ``shift_m`` east, declared on ``crs``, or ``size`` px."""
    import rasterio

    safe = tmp.safe("l2a", level="L2A", baseline="02.14")
    b05 = next(safe.rglob("*_B05_20m.jp2"))
    with rasterio.open(b05) as src:
        transform, native_crs = src.transform, src.crs
    scl = np.full((1, size, size), 9, np.uint16)  # all cloud: a mask that missed the scene comes out clear
    profile = {"driver": "JP2OpenJPEG", "width": size, "height": size, "count": 1, "dtype": "uint16"}
    profile.update(crs=crs or native_crs, transform=transform * rasterio.Affine.translation(shift_m / 20, 0))
    with rasterio.open(
        b05.with_name("T33UUU_20230610T101559_SCL_20m.jp2"), "w", QUALITY=100, REVERSIBLE="YES", **profile
    ) as dst:
        dst.write(scl)
    return safe


def _band_folder_with_a_13_band_file(tmp: Path) -> Path:
    from dsen2cr.inputs.product import band_code
    from dsen2cr.preprocessing import S2_BANDS

    folder = tmp / "IMG_DATA"
    folder.mkdir()
    for band in S2_BANDS:
        count = 13 if band == "B1" else 1
        data = np.full((count, 40, 50), 500, np.uint16)
        write_geotiff(folder / f"T32TXX_20200101T000000_{band_code(band)}.tif", data, crs=UTM32N, transform=ORIGIN)
    return folder


def _s1_with_descriptions(tmp: Path, names: tuple[str, str]) -> Path:
    import rasterio

    path = tmp / "s1_described.tif"
    rng = np.random.default_rng(3)
    write_geotiff(path, rng.uniform(-25, -5, (2, 40, 50)).astype(np.float32), crs=UTM32N, transform=ORIGIN)
    with rasterio.open(path, "r+") as dataset:
        for index, name in enumerate(names, start=1):
            dataset.set_band_description(index, name)
    return path


def _swapped_db() -> np.ndarray:
    """S1 dB with VH (about -18 dB) in band 1 and VV (about -12 dB) in band 2: VV is some 5-8 dB above VH."""
    vv = np.random.default_rng(6).normal(-12, 2, (40, 50))
    return np.stack([vv - 6, vv]).astype(np.float32)


def _s1_pair(tmp: Path, names: tuple[str, str], descriptions: tuple[str, str] = ("", ""), db: bool = False) -> str:
    """An S1 ``first,second`` pair of single-band files on the scene's grid, with these names and band
    descriptions (``db``: VH in the first, VV in the second, else random dB in both)."""
    import rasterio

    rng = np.random.default_rng(5)
    for index, (name, description) in enumerate(zip(names, descriptions, strict=True)):
        band = _swapped_db()[index : index + 1] if db else rng.uniform(-25, -5, (1, 40, 50)).astype(np.float32)
        write_geotiff(tmp / name, band, crs=UTM32N, transform=ORIGIN)
        if description:
            with rasterio.open(tmp / name, "r+") as dataset:
                dataset.set_band_description(1, description)
    return ",".join(str(tmp / name) for name in names)


def _s2_as(tmp: Path, dtype: str, *, crs: object = UTM32N, pixel: float = 10, low: int = 1, high: int = 200) -> Path:
    array = np.random.default_rng(4).integers(low, high, (13, 40, 50)).astype(dtype)
    transform = from_origin(500000 if pixel >= 1 else 9.0, 5000000 if pixel >= 1 else 48.0, pixel, pixel)
    return write_geotiff(tmp / f"s2_{dtype}.tif", array, crs=crs, transform=transform)


def _web_mercator_s2(tmp: Path) -> Path:
    """A 13-band scene exported in Web Mercator at 10 m (Earth Engine's exports take any CRS asked for), at 9 degrees
    east, 50 degrees north (y = ln(tan(45 + 50 / 2 degrees)) x 6378137 m): its pixels span 10 x cos 50 = 6.4 m."""
    array = np.random.default_rng(4).integers(300, 5000, (13, 40, 50)).astype(np.uint16)
    y = math.log(math.tan(math.radians(45 + 25))) * 6378137
    transform = from_origin(math.radians(9) * 6378137, y, 10, 10)
    return write_geotiff(tmp / "s2_mercator.tif", array, crs="EPSG:3857", transform=transform)


def _non_utf8(tmp: Path, name: bytes) -> str:
    """A path whose file name holds a byte that is not UTF-8 (as Python hands it over from argv)."""
    return str(tmp) + "/" + os.fsdecode(name)


def _s2_named_non_utf8(tmp: Path) -> str:
    s2, _ = tmp.scene()
    target = _non_utf8(tmp, b"s2-\xff.tif")
    os.link(s2, target)
    return target


CASES += [
    dict(
        name="remove-clouds: --out a band file inside the .SAFE input, --overwrite",
        setup=lambda t: _remove_to(t, t.safe("p"), next(t.safe("p").rglob("*_B04.jp2")), "--overwrite"),
        message="would replace input s2",
        keep=(
            "p/S2B_MSIL1C_20230610T101559_N0204_R065_T33UUU_20230610T1.SAFE/GRANULE/"
            "L1C_T33UUU_A000000_20230610T101559/IMG_DATA/T33UUU_20230610T101559_B04.jp2",
        ),
    ),
    dict(
        name="remove-clouds: --out the STAC item's B02 asset, --overwrite",
        setup=lambda t: _remove_to(t, _stac_s2(t), t / "stac" / "B02.tif", "--overwrite"),
        message="would replace input s2",
        keep=("stac/B02.tif",),
    ),
    dict(
        name="remove-clouds: --out the S1 STAC item's vv asset, --overwrite",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "vv.tif", "--overwrite", s1=_stac_s1(t), sar=True),
        message="would replace input s1",
        keep=("vv.tif",),
    ),
    dict(
        name="remove-clouds: S1 band descriptions that name VV twice",
        setup=lambda t: _remove_to(
            t, t.scene()[0], t / "o.tif", s1=_s1_with_descriptions(t, ("VV", "Sigma0_VV")), sar=True
        ),
        message="s1_described.tif: S1 band descriptions name VV twice (bands 1 and 2: 'VV', 'Sigma0_VV')",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: S1 band descriptions that say HH, HV (another polarisation pair)",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", s1=_s1_with_descriptions(t, ("HH", "HV")), sar=True),
        message="s1_described.tif: S1 band descriptions are ('HH', 'HV'); expected VV, VH",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 pair given VH first (by the files' names)",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", s1=_s1_pair(t, ("s1_vh.tif", "s1_vv.tif")), sar=True),
        message="s1_vh.tif: its name says VH, but an S1 pair's first file is VV (VV.tif,VH.tif)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an S1 pair of one polarisation twice (by the files' band descriptions)",
        setup=lambda t: _remove_to(
            t, t.scene()[0], t / "o.tif", s1=_s1_pair(t, ("a.tif", "b.tif"), ("Sigma0_VV_db", "VV")), sar=True
        ),
        message="b.tif: its band description says VV, but an S1 pair's second file is VH (VV.tif,VH.tif)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: STAC raster:bands scale 0",
        setup=lambda t: _remove_to(t, _stac_s2(t, scale=0, offset=-0.1), t / "o.tif"),
        message="raster:bands scale 0 of asset B01",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: STAC raster:bands offset 'abc'",
        setup=lambda t: _remove_to(t, _stac_s2(t, scale=0.0001, offset="abc"), t / "o.tif"),
        message="raster:bands offset 'abc' of asset B01",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: STAC raster:bands offset 1e309",
        setup=lambda t: _remove_to(t, _stac_s2(t, scale=0.0001, offset=float("inf")), t / "o.tif"),
        message="raster:bands offset inf of asset B01",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: STAC raster:bands scale 1e-320",
        setup=lambda t: _remove_to(t, _stac_s2(t, scale=1e-320, offset=-0.1), t / "o.tif"),
        message="raster:bands scale 1e-320 of asset B01",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE QUANTIFICATION_VALUE -10000",
        setup=lambda t: _remove_to(t, _safe_with_metadata(t, ">10000<", ">-10000<"), t / "o.tif"),
        message="quantification value '-10000'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE QUANTIFICATION_VALUE inf",
        setup=lambda t: _remove_to(t, _safe_with_metadata(t, ">10000<", ">inf<"), t / "o.tif"),
        message="quantification value 'inf'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE QUANTIFICATION_VALUE nan",
        setup=lambda t: _remove_to(t, _safe_with_metadata(t, ">10000<", ">nan<"), t / "o.tif"),
        message="quantification value 'nan'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE RADIO_ADD_OFFSET -1e9",
        setup=lambda t: _remove_to(
            t,
            _safe_with_metadata(t, ">-1000<", ">-1e9<", baseline="05.10", offsets={i: -1000 for i in range(13)}),
            t / "o.tif",
        ),
        message="RADIO_ADD_OFFSET '-1e9' of band_id 0",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE RADIO_ADD_OFFSET inf",
        setup=lambda t: _remove_to(
            t,
            _safe_with_metadata(t, ">-1000<", ">inf<", baseline="05.10", offsets={i: -1000 for i in range(13)}),
            t / "o.tif",
        ),
        message="RADIO_ADD_OFFSET 'inf' of band_id 0",
        absent=("o.tif",),
    ),
    *(
        dict(
            name=f"remove-clouds: --s2-offset {offset} ({why})",
            setup=lambda t, offset=offset: _remove_to(t, t.scene()[0], t / "o.tif", f"--s2-offset={offset}"),
            message=f"--s2-offset: {offset} is not an offset a Sentinel-2 product holds",
            absent=("o.tif",),
        )
        for offset, why in (("-100000", "beyond the DN range"), ("1000", "the sign flipped"))
    ),
    dict(
        name="remove-clouds: --s2-offset -1000 for a GeoTIFF that holds no offset (dark DN)",
        setup=lambda t: _remove_to(
            t,
            t.scene(s2=np.random.default_rng(8).integers(1, 900, (13, 40, 50)).astype(np.uint16))[0],
            t / "o.tif",
            "--s2-offset=-1000",
        ),
        message="s2.tif: the offset -1000 (--s2-offset) takes B1 to 0 or below on 100% of its valid pixels",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: SAFE metadata offsets -3000 that the data does not hold",
        setup=lambda t: _remove_to(
            t, t.safe("p", baseline="05.10", offsets={i: -3000 for i in range(13)}), t / "o.tif"
        ),
        message="the offset -3000 (the product's metadata) takes B1 to 0 or below on 100% of its valid pixels",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --cloud-threshold 20 (a percentage for a score in [0, 1])",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", "--cloud-threshold", "20"),
        message="--cloud-threshold: expected a cloud score in [0, 1] (the paper's 0.2), got '20'",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --out an existing folder without the trailing slash",
        setup=lambda t: (t / "outdir").mkdir() or _remove_to(t, t.scene()[0], t / "outdir"),
        message="outdir: is a folder; end it with a slash (",
    ),
    dict(
        name="remove-clouds: a manifest column misspelt (mask_0ut: the map would silently not be written)",
        setup=lambda t: _manifest_header_args(t, "s2,out,mask_0ut", "s2.tif,o.tif,m.tif"),
        message="m.csv: manifest column 'mask_0ut' is not one of s2, s1, out, mask_out, preview, uncertainty_out, "
        "stac_item, bounds, bounds_crs; "
        "did you mean 'mask_out'?",
        absent=("o.tif", "m.tif"),
    ),
    dict(
        name="remove-clouds: a manifest row with an unquoted VV,VH pair (one field too many)",
        setup=lambda t: _manifest_header_args(t, "s2,s1,out", "s2.tif,vv.tif,vh.tif,o.tif"),
        message="m.csv:2: more fields than the header's 3; quote a VV,VH pair",
        absent=("o.tif", "vh.tif"),
    ),
    dict(
        name="remove-clouds: a manifest separated by semicolons",
        setup=lambda t: _manifest_header_args(t, "s2;out", "s2.tif;o.tif"),
        message="m.csv: manifest column 's2;out' is not one of s2, s1, out, mask_out, preview, uncertainty_out, "
        "stac_item, bounds, bounds_crs; "
        "separate the columns with commas",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a zip holding two SAFEs",
        setup=lambda t: _remove_to(t, _zip_of_two_safes(t), t / "o.tif"),
        message="two.SAFE.zip: holds 2 Sentinel-2 products",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --mask product whose SCL is 5 km away",
        setup=lambda t: _remove_to(t, _l2a_with_scl(t, shift_m=5000), t / "o.tif", "--mask", "product", "--keep-clear"),
        message="SCL mask covers 0.0% of the scene",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --mask product whose SCL is on another CRS",
        setup=lambda t: _remove_to(
            t, _l2a_with_scl(t, crs=CRS.from_epsg(32632)), t / "o.tif", "--mask", "product", "--keep-clear"
        ),
        message="SCL mask covers 0.0% of the scene",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --mask product whose SCL is 20 x 20 px",
        setup=lambda t: _remove_to(t, _l2a_with_scl(t, size=20), t / "o.tif", "--mask", "product", "--keep-clear"),
        message="SCL mask covers 44.4% of the scene",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: uint8 S2",
        setup=lambda t: _remove_to(t, _s2_as(t, "uint8"), t / "o.tif"),
        message="s2_uint8.tif: S2 is uint8",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: int16 S2 with negative DN",
        setup=lambda t: _remove_to(t, _s2_as(t, "int16", low=-500, high=3000), t / "o.tif"),
        message="s2_int16.tif: S2 holds negative DN",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a 20 m GeoTIFF",
        setup=lambda t: _remove_to(t, _s2_as(t, "uint16", pixel=20, high=5000), t / "o.tif"),
        message="s2_uint16.tif: S2 pixels are 20 x 20 m; the model works at 10 m",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an EPSG:4326 GeoTIFF at 0.0001 degrees",
        setup=lambda t: _remove_to(t, _s2_as(t, "uint16", crs="EPSG:4326", pixel=0.0001, high=5000), t / "o.tif"),
        message="s2_uint16.tif: S2 is on a geographic CRS (EPSG:4326)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a GeoTIFF in Web Mercator (EPSG:3857) at 10 m, at 50 degrees north: 6.4 m on the ground",
        setup=lambda t: _remove_to(t, _web_mercator_s2(t), t / "o.tif"),
        message="s2_mercator.tif: S2 pixels are 10 x 10 m in EPSG:3857, but 6.42 x 6.42 m on the ground here; the "
        "model works at 10 m: reproject it to 10 m in the UTM zone of its centre first (rio warp IN OUT --dst-crs "
        "EPSG:32632 --res 10",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a band file holding 13 bands",
        setup=lambda t: _remove_to(t, _band_folder_with_a_13_band_file(t), t / "o.tif"),
        message="T32TXX_20200101T000000_B01.tif: S2 band has 13 bands, expected 1",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a non-UTF-8 byte in the --s2 name",
        setup=lambda t: _remove_to(t, _s2_named_non_utf8(t), t / "o.tif"),
        message="file name is not valid UTF-8",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a non-UTF-8 byte in the --out name",
        setup=lambda t: _remove_to(t, t.scene()[0], _non_utf8(t, b"o-\xff.tif")),
        message="file name is not valid UTF-8",
    ),
    dict(
        name="remove-clouds: a manifest row whose s2 is blanks",
        setup=lambda t: _manifest_args(t, [("   ", "", "o.tif")]),
        message="m.csv:2: s2 and out must not be empty",
        absent=("o.tif",),
    ),
]


# ------------------------------------------------------ round 3 (issue #26): the third table, remove-clouds


def _gcp_only(tmp: Path) -> Path:
    import rasterio
    from rasterio.control import GroundControlPoint

    path = tmp / "gcp.tif"
    corners = [(0, 0, 500000, 5000000), (40, 50, 500500, 4999600), (0, 50, 500500, 5000000)]
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=13, dtype="uint16") as dst:
        dst.write(np.full((13, 40, 50), 500, np.uint16))
        dst.gcps = ([GroundControlPoint(r, c, x, y) for r, c, x, y in corners], UTM32N)
    return path


def _item_collection(tmp: Path) -> Path:
    import json

    features = [{"type": "Feature", "id": name, "assets": {}} for name in "ab"]
    (tmp / "collection.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return tmp / "collection.json"


def _safe_without(tmp: Path, band: str) -> Path:
    safe = tmp.safe("p")
    next(safe.rglob(f"*_{band}.jp2")).unlink()
    return safe


def _safe_truncated(tmp: Path, band: str) -> Path:
    safe = tmp.safe("p")
    _truncate(next(safe.rglob(f"*_{band}.jp2")), 0.33)
    return safe


CASES += [
    dict(
        name="remove-clouds: a raster georeferenced by ground control points only",
        setup=lambda t: _remove_to(t, _gcp_only(t), t / "o.tif"),
        message="gcp.tif: S2 is georeferenced by ground control points only",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a STAC ItemCollection as --s2, with --s1",
        setup=lambda t: _remove_to(t, _item_collection(t), t / "o.tif", s1=t.scene()[1], sar=True),
        message="collection.json#ITEM_ID, or give the collection to dsen2cr pair or data triplets, which take each "
        "of its items",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: an item id the ItemCollection does not hold",
        setup=lambda t: _remove_to(t, f"{_item_collection(t)}#c", t / "o.tif"),
        message="collection.json#c: the ItemCollection ",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a manifest row reads another row's output",
        setup=lambda t: _manifest_args(t, [("s2.tif", "", "a.tif"), ("a.tif", "", "b.tif")]),
        message="S2 scene not found (it is another row's output",
        absent=("a.tif", "b.tif"),
    ),
    dict(
        name="remove-clouds: a SAFE that lacks a band file",
        setup=lambda t: _remove_to(t, _safe_without(t, "B05"), t / "o.tif"),
        message="no file for band B05",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a SAFE with a truncated band file",
        setup=lambda t: _remove_to(t, _safe_truncated(t, "B03"), t / "o.tif"),
        message="T33UUU_20230610T101559_B03.jp2: cannot read S2 band",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: a 12-band file whose descriptions name B10 (no B8A)",
        setup=lambda t: _remove_to(t, _twelve_with_b10(t), t / "o.tif"),
        message="band descriptions say B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12; expected the order",
        absent=("o.tif",),
    ),
]


def _twelve_with_b10(tmp: Path) -> Path:
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12"]
    array = np.random.default_rng(5).integers(300, 3000, (12, 40, 50)).astype(np.uint16)
    return write_geotiff(tmp / "twelve.tif", array, crs=UTM32N, transform=ORIGIN, band_names=names)


def test_an_html_page_behind_a_stac_url_is_named(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A URL is checked as a URL (it was taken for a missing local path, 'http:/…: not found') and an HTML
    page where an item should be is refused as not JSON, naming the URL."""
    import functools
    import http.server
    import threading

    (workdir / "page.json").write_text("<html>sign in</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(workdir))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/page.json"
    try:
        assert main(_remove_to(workdir, url, workdir / "o.tif")) == 2
    finally:
        httpd.shutdown()
    assert f"{url}: not a STAC item (not valid JSON" in capsys.readouterr().err
    assert not (workdir / "o.tif").exists()


def test_an_s1_file_whose_name_holds_a_comma_is_one_file(workdir: Path) -> None:
    """``--s1 's1,final.tif'`` names an existing file: read as that file (it was split as a VV,VH pair, 's1: S1
    scene not found'), the same output as under a plain name; so is a manifest's relative ``"s1,final.tif"``."""
    s2, s1 = workdir.scene()
    (workdir / "s1,final.tif").write_bytes(s1.read_bytes())
    assert main(_remove_to(workdir, s2, workdir / "comma.tif", s1=workdir / "s1,final.tif", sar=True)) == 0
    assert main(_remove_to(workdir, s2, workdir / "plain.tif", s1=s1, sar=True)) == 0
    np.testing.assert_array_equal(_pixels(workdir / "comma.tif"), _pixels(workdir / "plain.tif"))
    (workdir / "m.csv").write_text('s2,s1,out\ns2.tif,"s1,final.tif",listed.tif\n')
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(workdir / "m.csv"), "--no-progress"]) == 0
    np.testing.assert_array_equal(_pixels(workdir / "listed.tif"), _pixels(workdir / "plain.tif"))


@pytest.mark.parametrize(
    "case",
    ["rotated transform", "one pixel wide", "one row of 5000", "saturated 65535", "feather 0", "all cloud"],
)
def test_unusual_but_valid_scenes_are_processed(workdir: Path, case: str) -> None:
    """Accepted and correct: the output has the input's grid (CRS, transform, size) and DN in [1, 10000]; with
    --keep-clear on an all-cloud scene every pixel is predicted; with --feather 0 the blend is a hard edge."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(7)
    shape, transform, extra = (40, 50), ORIGIN, []
    if case == "rotated transform":
        transform = Affine.translation(500000, 5000000) * Affine.rotation(30) * Affine.scale(10, -10)
    elif case == "one pixel wide":
        shape = (40, 1)
    elif case == "one row of 5000":
        shape = (1, 5000)
    array = rng.integers(300, 3000, (13, *shape)).astype(np.uint16)
    if case == "saturated 65535":
        array[:, :10] = 65535
    elif case == "feather 0":
        extra = ["--keep-clear", "--feather", "0"]
    elif case == "all cloud":
        array[:] = 9000
        extra = ["--keep-clear"]
    s2 = write_geotiff(workdir / "s2.tif", array, crs=UTM32N, transform=transform)
    assert main(_remove_to(workdir, s2, workdir / "o.tif", *extra)) == 0
    with rasterio.open(s2) as source, rasterio.open(workdir / "o.tif") as out:
        assert (out.crs, out.transform, out.shape) == (source.crs, source.transform, source.shape)
        values = out.read()
    assert values.min() >= 1 and values.max() <= 10000


# ------------------------------------------------------------------ --uncertainty-out (issue #28)


def _diag_weights(tmp: Path) -> Path:
    from dsen2cr.models.dsen2cr import ModelConfig

    return save_weights(ModelConfig(2, 8, False, 0.1, "diag").build(), tmp / "diag.safetensors")


CASES += [
    dict(
        name="remove-clouds: --uncertainty-out with weights that predict no uncertainty",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", "--uncertainty-out", str(t / "s.tif")),
        message="s.tif: --uncertainty-out needs weights that predict their uncertainty (trained with "
        "model.uncertainty=diag); ",
        absent=("o.tif", "s.tif"),
    ),
    *(
        dict(
            name=f"remove-clouds: --uncertainty-out with --precision {precision}",
            setup=lambda t, precision=precision: [
                *_remove_args(
                    t, "--out", str(t / "o.tif"), "--uncertainty-out", str(t / "s.tif"), weights=_diag_weights(t)
                ),
                "--precision",
                precision,
            ],
            message="s.tif: --uncertainty-out runs the model eagerly in fp32 (or tf32), an ONNX file with "
            "onnxruntime; leave --backend auto, eager or onnxruntime and --precision auto, fp32 or tf32",
            absent=("o.tif", "s.tif"),
        )
        for precision in ("fp16", "bf16")
    ),
    dict(
        name="remove-clouds: --uncertainty-out for several scenes",
        setup=lambda t: [
            *_remove_args(t, "--out", str(t), "--uncertainty-out", str(t / "s.tif"), weights=_diag_weights(t)),
            "--s2",
            str(t.scene()[0]),
            str(t.scene()[0]),
        ],
        message="with several scenes, give a folder (masks/) for each scene's file named after its image, or name them "
        "per scene in a --manifest",
        absent=("s.tif",),
    ),
    dict(
        name="remove-clouds: --uncertainty-out equal to --out",
        setup=lambda t: _remove_args(
            t, "--out", str(t / "o.tif"), "--uncertainty-out", str(t / "o.tif"), weights=_diag_weights(t)
        ),
        message="o.tif: output uncertainty_out would replace output out",
        absent=("o.tif",),
    ),
]


def _ensemble_args(tmp: Path, *weights: Path) -> list[str]:
    """remove-clouds --weights A B … --uncertainty-out over the small test scene (members without SAR)."""
    s2, _ = tmp.scene()
    members = [str(path) for path in weights]
    outputs = ["--out", str(tmp / "o.tif"), "--uncertainty-out", str(tmp / "s.tif"), "--no-progress"]
    return ["remove-clouds", "--weights", *members, "--s2", str(s2), *outputs]


def _byte_copy(tmp: Path, source: Path, name: str) -> Path:
    (tmp / name).write_bytes(source.read_bytes())
    return tmp / name


def _as_checkpoint(tmp: Path, source: Path) -> Path:
    """The same weights as a training checkpoint (other bytes, equal tensors)."""
    from dsen2cr.weights import CONFIG_KEY, load_model

    model = load_model(source)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, CONFIG_KEY: model.config.to_dict()}, tmp / "same.ckpt")
    return tmp / "same.ckpt"


# ------------------------------------------------------------------------------------------------ --stac-item
CASES += [
    dict(
        name="remove-clouds: --stac-item for a scene whose sensing time nothing says",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", "--stac-item", str(t / "i.json")),
        message="s2.tif: --stac-item i.json: when the scene was sensed is unknown (no metadata says it, nor a "
        "Sentinel-2 date and time such as 20170216T102101 in its name), and a STAC item must say it; give the product "
        "itself, or tag the file (gdal_edit.py -mo PRODUCT_START_TIME=2017-02-16T10:21:01Z FILE)",
        absent=("o.tif", "i.json"),
    ),
    dict(
        name="remove-clouds: --stac-item not named .json",
        setup=lambda t: _remove_to(t, _sensed_scene(t), t / "o.tif", "--stac-item", str(t / "i.xml")),
        message="i.xml: this command writes a JSON file; name it *.json",
        absent=("o.tif", "i.xml"),
    ),
    dict(
        name="remove-clouds: --stac-item that is the S2 STAC item read",
        setup=lambda t: _remove_to(
            t, _stac_s2(t), t / "o.tif", "--stac-item", str(t / "stac" / "item.json"), "--overwrite"
        ),
        message="item.json: output stac_item would replace",
        keep=("stac/item.json",),
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --stac-item naming a weights file, --overwrite",
        setup=lambda t: _remove_to(
            t, _sensed_scene(t), t / "o.tif", "--stac-item", str(_byte_copy(t, t.weights(), "w.json")), "--overwrite"
        ),
        message="w.json: holds a safetensors weights file, not a JSON file",
        keep=("w.json",),
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --stac-item of a scene that fails (no valid pixels): no item",
        setup=lambda t: _remove_to(t, _sensed_scene(t, empty=True), t / "o.tif", "--stac-item", str(t / "i.json")),
        message="T32TPT_20230610T101559_10m.tif: S2 has no valid pixels",
        absent=("o.tif", "i.json"),
    ),
    dict(
        name="remove-clouds: --mask-out a folder that does not exist",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", f"--mask-out={t / 'masks'}/"),
        message="masks/: output folder does not exist",
        absent=("o.tif", "masks"),
    ),
    dict(
        name="remove-clouds: --stac-item an existing folder without the trailing slash",
        setup=lambda t: (
            (t / "items").mkdir() or _remove_to(t, _sensed_scene(t), t / "o.tif", "--stac-item", str(t / "items"))
        ),
        message="items: is a folder; end it with a slash (",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --stac-item for several scenes",
        setup=lambda t: [
            *_remove_args(t, "--out", str(t), "--stac-item", str(t / "i.json")),
            "--s2",
            str(_sensed_scene(t)),
            str(t.scene()[0]),
        ],
        message="with several scenes, give a folder (masks/) for each scene's file named after its image, or name them "
        "per scene in a --manifest",
        absent=("i.json",),
    ),
]


# ------------------------------------------------------------------------------------------------ --s1-max-days
CASES += [
    dict(
        name="remove-clouds: S1 sensed 40 days from the scene, --s1-max-days 10",
        setup=lambda t: _remove_to(
            t, _sensed_scene(t), t / "o.tif", "--s1-max-days", "10", s1=_dated_s1(t, "2023-07-20T05:12:34Z"), sar=True
        ),
        message="s1.tif: sensed 2023-07-20T05:12:34Z, 39.8 days after S2 (2023-06-10T10:15:59Z), beyond --s1-max-days "
        "10; give S1 sensed closer to the scene's date",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --s1-max-days with S1 whose date nothing says",
        setup=lambda t: _remove_to(t, _sensed_scene(t), t / "o.tif", "--s1-max-days", "10", s1=t / "s1.tif", sar=True),
        message="s1.tif: --s1-max-days 10: when S1 was sensed is unknown (no metadata says it, nor a date and time "
        "such as 20170216T051234 in its name); give its STAC item, or tag the file (gdal_edit.py -mo "
        "ACQUISITION_START_TIME=2017-02-16T05:12:34Z FILE)",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --s1-max-days with a scene whose date nothing says",
        setup=lambda t: _remove_to(
            t, t.scene()[0], t / "o.tif", "--s1-max-days", "10", s1=_dated_s1(t, "2023-06-08T05:12:34Z"), sar=True
        ),
        message="s2.tif: --s1-max-days 10: when the scene was sensed is unknown",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: --s1-max-days -1",
        setup=lambda t: _remove_to(t, t.scene()[0], t / "o.tif", "--s1-max-days", "-1", s1=t / "s1.tif", sar=True),
        message="--s1-max-days: must be 0 or more days, got -1.0",
        absent=("o.tif",),
    ),
    dict(
        name="remove-clouds: the second of two scenes has S1 too far in time (refused before the first runs)",
        setup=lambda t: _second_scene_too_far(t),
        message="far.tif: sensed 2023-06-08T05:12:34Z, 44.2 days before S2 (2023-07-22T10:15:59Z), beyond "
        "--s1-max-days 10",
        absent=("outdir/T32TPT_20230610T101559_10m_cloudfree.tif",),
    ),
    dict(
        name="remove-clouds: an S1 pair of two acquisitions",
        setup=lambda t: _remove_to(t, _sensed_scene(t), t / "o.tif", s1=_pair_of_two_dates(t), sar=True),
        message="VV and VH were sensed at different times (VV 2023-06-08T05:12:34Z, VH 2023-06-20T05:12:34Z): an S1 "
        "pair is the two polarisations of one acquisition",
        absent=("o.tif",),
    ),
]


def _dated_s1(tmp: Path, when: str, name: str = "s1.tif") -> Path:
    """The test scene's S1 as ``name``, tagged as GDAL's Sentinel-1 driver tags a product's sensing start."""
    _, s1 = tmp.scene()
    dated = tmp / name
    if dated != s1:
        dated.write_bytes(s1.read_bytes())
    with rasterio.open(dated, "r+") as dataset:
        dataset.update_tags(ACQUISITION_START_TIME=when)
    return dated


def _second_scene_too_far(tmp: Path) -> list[str]:
    """Two scenes into one folder, --s1-max-days 10: the first with S1 2.2 days before it, the second 44.2 days."""
    first, second = _sensed_scene(tmp), _sensed_scene(tmp, "T32TPT_20230722T101559_10m.tif")
    near, far = (_dated_s1(tmp, "2023-06-08T05:12:34Z", name) for name in ("near.tif", "far.tif"))
    (tmp / "outdir").mkdir()
    args = _remove_to(tmp, first, tmp / "outdir", "--s1-max-days", "10", sar=True)
    return [*args, "--s2", str(first), str(second), "--s1", str(near), str(far)]


def _hyp3_amplitude_pair(tmp: Path) -> str:
    """The test scene's S1 as ASF's HyP3 delivers an RTC product ordered in amplitude: one file per polarisation,
    named ``…_RTC10_G_gauned_…_VV.tif`` (gamma0, amplitude), holding the square root of linear power (0.05 to 0.5:
    what a check of the values takes for power)."""
    _, s1 = tmp.scene()
    with rasterio.open(s1) as dataset:
        amplitude = np.sqrt(10 ** (dataset.read() / 10)).astype(np.float32)
        crs, transform = dataset.crs, dataset.transform
    source = write_geotiff(tmp / "amplitude.tif", amplitude, crs=crs, transform=transform)
    name = "S1A_IW_20230608T051234_DVP_RTC10_G_gauned_5F3A"
    return split_s1(source, f"{name}_VV.tif", f"{name}_VH.tif")


def _pair_of_two_dates(tmp: Path) -> str:
    """A VV,VH pair of the test scene's S1 bands, named after two acquisitions 12 days apart."""
    _, s1 = tmp.scene()
    vv = "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A_VV.tif"
    return split_s1(s1, vv, "S1A_IW_20230620T051234_DVP_RTC10_G_gpuned_77C1_VH.tif")


def _sensed_scene(tmp: Path, file_name: str = "T32TPT_20230610T101559_10m.tif", *, empty: bool = False) -> Path:
    """The test scene (``empty``: all nodata) under a Sentinel-2 name, which says when it was sensed."""
    s2, _ = tmp.scene(s2=np.zeros((13, 40, 50), np.uint16) if empty else None)
    named = tmp / file_name
    named.write_bytes(s2.read_bytes())
    return named


# An ensemble of copies: they never disagree, so its sigma (the members' spread) would be 0 everywhere.
CASES += [
    dict(
        name="remove-clouds: one weights file twice in an ensemble",
        setup=lambda t: _ensemble_args(t, t.weights("dsen2cr-small-nosar"), t.weights("dsen2cr-small-nosar")),
        message="dsen2cr-small-nosar.safetensors: the same network as ",
        absent=("o.tif", "s.tif"),
    ),
    dict(
        name="remove-clouds: an ensemble of a weights file and its byte copy",
        setup=lambda t: _ensemble_args(
            t, t.weights("dsen2cr-small-nosar"), _byte_copy(t, t.weights("dsen2cr-small-nosar"), "copy.safetensors")
        ),
        message="copy.safetensors: the same network as ",
        absent=("o.tif", "s.tif"),
    ),
    dict(
        name="remove-clouds: an ensemble of weights and a checkpoint holding the same tensors",
        setup=lambda t: _ensemble_args(
            t, t.weights("dsen2cr-small-nosar"), _as_checkpoint(t, t.weights("dsen2cr-small-nosar"))
        ),
        message="same.ckpt: the same network as ",
        absent=("o.tif", "s.tif"),
    ),
]


@pytest.mark.parametrize("case", ["cache dir is a file", "HOME unset", "unicode paths with spaces"])
def test_unusual_but_valid_environments(
    workdir: Path, run_cli: Callable[..., subprocess.CompletedProcess], case: str
) -> None:
    """#26's environment rows, each in a fresh process: a compile cache folder that is a file (warned, the run
    compiles without keeping it, the file untouched), no HOME at all, and names in other scripts with spaces:
    each run succeeds."""
    s2, _ = workdir.scene()
    out = workdir / "o.tif"
    env, extra = dict(os.environ), []
    if case == "cache dir is a file":
        (workdir / "cache").write_text("mine")
        env["DSEN2CR_CACHE_DIR"] = str(workdir / "cache")
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set once a compiled test ran in this process; it would win
        extra = ["--backend", "compiled"]
    elif case == "HOME unset":
        for name in ("HOME", "XDG_CACHE_HOME", "DSEN2CR_CACHE_DIR"):
            env.pop(name, None)
    else:
        folder = workdir / "ünï cødé 雲"
        folder.mkdir()
        os.replace(s2, folder / "scène 1.tif")
        s2, out = folder / "scène 1.tif", folder / "sortie é.tif"
    result = run_cli(*_remove_to(workdir, s2, out, *extra), env=env)
    assert result.returncode == 0 and out.is_file(), result.stderr
    if case == "cache dir is a file":
        assert "compile cache: cannot create" in result.stderr
        assert (workdir / "cache").read_text() == "mine"


# ------------------------------------------------------------- remove-clouds --resume: a stopped scene's journal


def _with_journal(tmp: Path, lines: str, *extra: str) -> list[str]:
    """remove-clouds into o.tif, beside which a stopped run's journal holds ``lines``."""
    journal = tmp / ".o.tif.journal"
    journal.mkdir()
    (journal / "windows.jsonl").write_text(lines)
    (journal / "predictions.f32").write_bytes(b"")
    return _remove_to(tmp, tmp.scene()[0], tmp / "o.tif", *extra)


_JOURNAL_HEADER = '{"format": "dsen2cr scene journal 1", "identity": {"windows": 12}}\n'

CASES += [
    dict(
        name="remove-clouds: a stopped run's journal beside the output, without --resume",
        setup=lambda t: _with_journal(t, _JOURNAL_HEADER),
        message="o.tif: a stopped run of this scene predicted 0 of its 12 windows (kept in .o.tif.journal): --resume",
        absent=("o.tif",),
        keep=(".o.tif.journal/windows.jsonl",),
    ),
    dict(
        name="remove-clouds: --resume with a journal that is not one",
        setup=lambda t: _with_journal(t, "PK\x03\x04 not json\n", "--resume"),
        message=".o.tif.journal/windows.jsonl: not a scene's journal (",
        absent=("o.tif",),
        keep=(".o.tif.journal/windows.jsonl",),
    ),
    dict(
        name="remove-clouds: --resume with a journal of another version's format",
        setup=lambda t: _with_journal(t, '{"format": "dsen2cr scene journal 9", "identity": {}}\n', "--resume"),
        message="windows.jsonl: written by another version of dsen2cr (format 'dsen2cr scene journal 9'); --overwrite",
        absent=("o.tif",),
        keep=(".o.tif.journal/windows.jsonl",),
    ),
    dict(
        name="remove-clouds: --resume with a journal whose predictions file is gone",
        setup=lambda t: _without_predictions(_with_journal(t, _JOURNAL_HEADER, "--resume"), t),
        message=".o.tif.journal/predictions.f32: missing; --overwrite starts the scene again",
        absent=("o.tif",),
        keep=(".o.tif.journal/windows.jsonl",),
    ),
    dict(
        name="remove-clouds: a file where the journal goes, with --resume",
        setup=lambda t: _journal_file(t, "--resume"),
        message=".o.tif.journal: is not a journal folder (a file); move it away, or choose another output",
        absent=("o.tif",),
        keep=(".o.tif.journal",),
    ),
    dict(
        name="remove-clouds: a file where the journal goes, with --overwrite",
        setup=lambda t: _journal_file(t, "--overwrite"),
        message=".o.tif.journal: is not a journal folder (a file); move it away, or choose another output",
        absent=("o.tif",),
        keep=(".o.tif.journal",),
    ),
]


def _without_predictions(argv: list[str], tmp: Path) -> list[str]:
    """``argv``, its journal's predictions file removed."""
    (tmp / ".o.tif.journal" / "predictions.f32").unlink()
    return argv


def _journal_file(tmp: Path, *extra: str) -> list[str]:
    """remove-clouds into o.tif, a file of the user's named where its journal goes."""
    (tmp / ".o.tif.journal").write_text("mine")
    return _remove_to(tmp, tmp.scene()[0], tmp / "o.tif", "--journal", "on", *extra)
