"""Shared fixtures: tiny, seeded SEN12MS-CR-layout GeoTIFFs with a real CRS, small scenes and weights, the
command line in-process and in a fresh process, and the runner of the tables of bad-input cases.

Test modules import nothing from here (nor from each other): they ask for these fixtures by name.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.data.layout import Triplet, release_triplet
from dsen2cr.inputs.product import L2A_BANDS, band_code
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.weights import save_weights

UTM32N = CRS.from_epsg(32632)
UTM33N = CRS.from_epsg(32633)
SCENE_ORIGIN = from_origin(500000, 5000000, 10, 10)
SAFE_SIZE = 60  # 10 m pixels of a product made by _make_safe; 20 m bands 30, 60 m bands 10


def _write_release_triplet(
    root: Path,
    season: str,
    roi: int,
    patch: int,
    *,
    size: int = 32,
    seed: int = 0,
    s1_bands: int = 2,
    s1_size: int | None = None,
    s1_crs: CRS = UTM32N,
) -> Triplet:
    """Write one triplet in the official nested layout with random but valid values; return it."""
    rng = np.random.default_rng([seed, roi, patch])
    transform = from_origin(400000 + 1000 * patch, 5000000 + 10000 * roi, 10, 10)
    s1_size = s1_size or size
    arrays = {
        "s1": rng.uniform(-30, 2, size=(s1_bands, s1_size, s1_size)).astype(np.float32),
        "s2": rng.integers(1, 6000, size=(13, size, size)).astype(np.uint16),
        "s2_cloudy": rng.integers(1, 11000, size=(13, size, size)).astype(np.uint16),
    }
    triplet = release_triplet(root, season, roi, patch)
    for sensor, path in triplet.paths().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_geotiff(path, arrays[sensor], crs=s1_crs if sensor == "s1" else UTM32N, transform=transform)
    return triplet


SAFE_RESOLUTION = {
    "B2": 10,
    "B3": 10,
    "B4": 10,
    "B8": 10,
    "B5": 20,
    "B6": 20,
    "B7": 20,
    "B8A": 20,
    "B11": 20,
    "B12": 20,
    "B1": 60,
    "B9": 60,
    "B10": 60,
}
SAFE_TILE = "T33UUU_20230610T101559"
#: The sensing time the products of :func:`_make_safe` declare (their names say 10:15:59, to the second).
SAFE_SENSING_TIME = "2023-06-10T10:15:59.024Z"


def _band_array(band: str, seed: int = 0) -> np.ndarray:
    """DN of one band at its native resolution (a smooth field plus noise, clear-sky values)."""
    size = SAFE_SIZE * 10 // SAFE_RESOLUTION[band]
    rng = np.random.default_rng([seed, S2_BANDS.index(band)])
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (800 + 1500 * yy + 700 * xx + rng.integers(0, 200, (size, size))).astype(np.uint16)[None]


def _write_jp2(path: Path, array: np.ndarray, resolution: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = from_origin(399960, 5800020, resolution, resolution)
    profile = {
        "driver": "JP2OpenJPEG",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": 1,
        "dtype": "uint16",
        "crs": UTM33N,
        "transform": transform,
        "QUALITY": 100,
        "REVERSIBLE": "YES",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _product_metadata(level: str, baseline: str, offsets: dict[int, int] | None) -> str:
    """A minimal MTD_MSIL1C.xml / MTD_MSIL2A.xml with the elements the reader uses."""
    l2a = level == "L2A"
    tag = "BOA_ADD_OFFSET" if l2a else "RADIO_ADD_OFFSET"
    entries = "".join(f'<{tag} band_id="{i}">{v}</{tag}>' for i, v in (offsets or {}).items())
    if l2a:
        quantification = (
            '<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000'
            "</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>"
        )
        offset_list = f"<BOA_ADD_OFFSET_VALUES_LIST>{entries}</BOA_ADD_OFFSET_VALUES_LIST>" if offsets else ""
    else:
        quantification = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offset_list = f"<Radiometric_Offset_List>{entries}</Radiometric_Offset_List>" if offsets else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><n1:Level-{level[1:]}_User_Product '
        f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd">'
        f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>{SAFE_SENSING_TIME}</PRODUCT_START_TIME>"
        f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE></Product_Info>"
        f"<Product_Image_Characteristics>{quantification}{offset_list}</Product_Image_Characteristics>"
        f"</n1:General_Info></n1:Level-{level[1:]}_User_Product>"
    )


def _make_safe(
    folder: Path,
    *,
    level: str = "L1C",
    baseline: str = "02.04",
    shift: int = 0,
    offsets: dict[int, int] | None = None,
    metadata: bool = True,
) -> Path:
    """A tiny SAFE product: band JP2s at native resolution in the product's layout, and its metadata."""
    name = f"S2B_MSI{level[0:1]}{level[1:]}_20230610T101559_N{baseline.replace('.', '')}_R065_T33UUU_20230610T1.SAFE"
    safe = folder / name
    granule = safe / "GRANULE" / f"{level}_T33UUU_A000000_20230610T101559" / "IMG_DATA"
    for band in S2_BANDS if level == "L1C" else L2A_BANDS:
        resolution = SAFE_RESOLUTION[band]
        array = _band_array(band) + np.uint16(shift)
        if level == "L1C":
            path = granule / f"{SAFE_TILE}_{band_code(band)}.jp2"
        else:
            path = granule / f"R{resolution}m" / f"{SAFE_TILE}_{band_code(band)}_{resolution}m.jp2"
        _write_jp2(path, array, resolution)
    if metadata:
        (safe / f"MTD_MSI{level[0:1]}{level[1:]}.xml").write_text(_product_metadata(level, baseline, offsets))
    return safe


class Workdir(type(Path())):  # type: ignore[misc]  # the concrete Path class of this platform
    """A test's temporary folder (a ``Path``) that builds small, real inputs in itself: a release tree, a
    training config, weights, a scene, a SAFE product. Each builder writes once and returns the same paths when
    asked again. (No method named ``read`` or ``write``: rasterio would take the folder for a file object.)"""

    crs = UTM32N

    def triplet(self, root: Path, season: str, roi: int, patch: int, **options: Any) -> Triplet:
        """One triplet in the official nested layout under ``root`` (see :func:`_write_release_triplet`)."""
        return _write_release_triplet(root, season, roi, patch, **options)

    def tree(self) -> Path:
        """A small release tree (48 px patches) with one triplet per split and its ``files.csv``."""
        root = self / "data"
        if (root / "files.csv").exists():
            return root
        lines = []
        for roi, split in ((1, 1), (2, 2), (3, 3)):
            t = self.triplet(root, "ROIs1158_spring", roi, 0, size=48)
            lines.append(
                f"{split}\tROIs1158_spring_s1/s1_{roi}\tROIs1158_spring_s2/s2_{roi}\t"
                f"ROIs1158_spring_s2_cloudy/s2_cloudy_{roi}\t{t.s1.name}"
            )
        (root / "files.csv").write_text("\n".join(lines) + "\n")
        return root

    def tree_with_two_test_patches(self, *, nan_cloudy: bool = False) -> tuple[Path, Path]:
        """:meth:`tree` with a second test patch (ROI 4, 48 px; with ``nan_cloudy`` its cloudy image all NaN);
        returns the root and its file list."""
        root = self.tree()
        t = self.triplet(root, "ROIs1158_spring", 4, 0, size=48, seed=4)
        with (root / "files.csv").open("a") as f:
            f.write(
                f"3\tROIs1158_spring_s1/s1_4\tROIs1158_spring_s2/s2_4\tROIs1158_spring_s2_cloudy/s2_cloudy_4\t{t.s1.name}\n"
            )
        if nan_cloudy:
            with rasterio.open(t.s2) as clear:
                transform = clear.transform
            write_geotiff(t.s2_cloudy, np.full((13, 48, 48), np.nan, np.float32), crs=UTM32N, transform=transform)
        return root, root / "files.csv"

    def config(self, **sections: dict) -> Path:
        """A one-epoch CPU training config over :meth:`tree`, sections updated by ``sections``."""
        root = self.tree()
        settings: dict[str, dict] = {
            "model": {"variant": "dsen2cr-small"},
            "optim": {"epochs": 1, "batch_size": 2},
            "data": {"root": str(root), "file_list": str(root / "files.csv"), "crop_size": 32, "num_workers": 0},
            "trainer": {"out_dir": str(self / "run"), "accelerator": "cpu", "devices": 1},
        }
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        path = self / "config.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def weights(self, variant: str = "dsen2cr-small") -> Path:
        """Freshly initialised weights of ``variant`` (safetensors)."""
        path = self / f"{variant}.safetensors"
        return path if path.exists() else save_weights(create_model(variant), path)

    def scene(self, *, s2: np.ndarray | None = None, s1: np.ndarray | None = None) -> tuple[Path, Path]:
        """A 50 x 40 px S2 scene (13 bands, uint16) and S1 on its grid (``s2.tif``, ``s1.tif``)."""
        rng = np.random.default_rng(0)
        s2 = rng.integers(1, 8000, size=(13, 40, 50)).astype(np.uint16) if s2 is None else s2
        s1 = rng.uniform(-25, -5, size=(2, 40, 50)).astype(np.float32) if s1 is None else s1
        return (
            write_geotiff(self / "s2.tif", s2, crs=UTM32N, transform=SCENE_ORIGIN),
            write_geotiff(self / "s1.tif", s1, crs=UTM32N, transform=SCENE_ORIGIN),
        )

    def safe(self, name: str = "", **options: Any) -> Path:
        """A tiny SAFE product in this folder (or its subfolder ``name``): see :func:`_make_safe`."""
        return _make_safe(self / name if name else self, **options)


def write_stac_item(s2: Path, folder: Path, *, raster_bands: dict | None = None, **properties: object) -> Path:
    """A Level-1C STAC item ``folder/item.json`` of a 13-band GeoTIFF: one single-band GeoTIFF per band, Planetary
    Computer's keys (``B01``), relative hrefs, each asset's ``raster:bands`` ``raster_bands`` (none when None), and
    ``properties`` beside the product type."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    with rasterio.open(s2) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    for index, band in enumerate(S2_BANDS):
        write_geotiff(folder / f"{band_code(band)}.tif", data[index : index + 1], crs=crs, transform=transform)
        asset: dict = {"href": f"{band_code(band)}.tif", "eo:bands": [{"name": band_code(band)}]}
        if raster_bands is not None:
            asset["raster:bands"] = [dict(raster_bands)]
        assets[band_code(band)] = asset
    item = {"type": "Feature", "id": "x", "properties": {"s2:product_type": "S2MSI1C", **properties}, "assets": assets}
    (folder / "item.json").write_text(json.dumps(item))
    return folder / "item.json"


def split_s1(s1: Path, vv_name: str, vh_name: str) -> str:
    """The two bands of the 2-band S1 file ``s1`` as single-band files ``vv_name`` and ``vh_name`` beside it, on its
    grid; returns the ``--s1`` pair ``VV,VH`` of their paths."""
    with rasterio.open(s1) as dataset:
        data, crs, transform = dataset.read(), dataset.crs, dataset.transform
    for index, name in enumerate((vv_name, vh_name)):
        write_geotiff(s1.with_name(name), data[index : index + 1], crs=crs, transform=transform)
    return f"{s1.with_name(vv_name)},{s1.with_name(vh_name)}"


def diag_weights(path: Path, likelihood: str | None = "gnll", *, include_sar: bool = True, seed: int = 0) -> Path:
    """Randomly initialised weights (``seed``) of a small model with sigma whose training record names
    ``likelihood``."""
    import json

    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.weights import TRAINING_KEY

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ModelConfig(2, 8, include_sar, 0.1, "diag").build().eval()
    record = {TRAINING_KEY: json.dumps({"loss": {"name": likelihood}})} if likelihood else None
    return save_weights(model, path, provenance=record)


def intervals_said(intervals: dict[str, list[float]]) -> str:
    """How outputs state a stored calibration's intervals (share -> each band's multiple of sigma): the range of
    the multiples, each rounded up to two decimals, ``68.3 % of values within +-0.62 to 1.30 sigma, 90 % within
    +-1.70 sigma (each band its multiple)``."""
    said = []
    for i, (level, multiples) in enumerate(intervals.items()):
        low, high = (f"{math.ceil(q * 100 - 1e-9) / 100:.2f}" for q in (min(multiples), max(multiples)))
        span = low if low == high else f"{low} to {high}"
        said.append(f"{100 * float(level):g} % {'of values ' * (i == 0)}within +-{span} sigma")
    return ", ".join(said) + " (each band its multiple)"


def write_dated_s2(
    folder: Path, left: int, stamp: str, *, cloud_columns: int = 0, nodata_columns: int = 0, add: int = 0
) -> Path:
    """A 120 x 160 px 13-band L1C scene of dark ground (DN 500-519, B10 20) on the 10 m UTM 32N grid whose left edge
    is ``left`` (top 5000000), sensed at ``stamp`` (its name ``T32…_{stamp}_10m.tif`` says so), with an opaque cloud
    (6000 DN, B10 300: every rule of the paper's detector says cloud) over its first ``cloud_columns`` columns and
    no data in its last ``nodata_columns``; ``add`` added to every valid DN (a baseline 04.00 export's offset)."""
    rng = np.random.default_rng(int(stamp[:8]) + left)
    dn = rng.integers(500, 520, size=(13, 120, 160)).astype(np.uint16)
    dn[S2_BANDS.index("B10")] = 20
    dn[:, :, :cloud_columns] = 6000
    dn[S2_BANDS.index("B10"), :, :cloud_columns] = 300
    dn[:, :, dn.shape[2] - nodata_columns :] = 0
    dn[dn > 0] += add
    path = folder / f"T32{'TPT' if left == 500000 else 'TQT'}_{stamp}_10m.tif"
    return write_geotiff(path, dn, crs=CRS.from_epsg(32632), transform=from_origin(left, 5000000, 10, 10))


def write_s1_item(s1: Path, name: str = "s1_item.json", **properties: object) -> Path:
    """An S1 STAC item ``name`` beside the 2-band S1 file ``s1``: ``vv`` and ``vh`` assets (its bands as files,
    :func:`split_s1`) and ``properties``."""
    import json

    split_s1(s1, "vv.tif", "vh.tif")
    item = {"type": "Feature", "id": "s1", "properties": properties}
    item["assets"] = {"vv": {"href": "vv.tif"}, "vh": {"href": "vh.tif"}}
    s1.with_name(name).write_text(json.dumps(item))
    return s1.with_name(name)


#: A Sentinel-1 IW GRD product's name, as ESA names it (S1A, absolute orbit 15335: relative orbit 38).
S1_GRD_NAME = "S1A_IW_GRDH_1SDV_20170216T051234_20170216T051259_015335_0191A9_5C2F"


def write_s1_product(folder: Path, name: str = S1_GRD_NAME, *, suffix: str = ".SAFE", zipped: bool = False) -> Path:
    """A Sentinel-1 Level-1 product as ESA delivers it, in small: ``name + suffix`` holding ``manifest.safe`` and
    ``measurement/`` with VV and VH files of amplitude DN (uint16) in radar geometry, georeferenced by ground
    control points only (no map grid), named as ESA names them (``s1a-iw-grd-vv-…-001.tiff``); ``zipped``: that
    folder in ``name + suffix + .zip``, as the Copernicus Data Space delivers it (the folder removed)."""
    import shutil

    from rasterio.control import GroundControlPoint

    product = folder / f"{name}{suffix}"
    (product / "measurement").mkdir(parents=True)
    (product / "annotation" / "calibration").mkdir(parents=True)
    (product / "manifest.safe").write_text('<?xml version="1.0"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1"/>\n')
    corners = [(0, 0, 12.0, 52.5), (0, 49, 12.7, 52.5), (39, 0, 12.0, 52.2), (39, 49, 12.7, 52.2)]
    gcps = [GroundControlPoint(row, col, x, y, 0.0) for row, col, x, y in corners]
    parts = name.lower().replace("__", "_").split("_")  # s1a, iw, grdh, 1sdv, start, stop, orbit, datatake, sum
    kind = parts[2][:3]
    for number, polarisation in enumerate(("vv", "vh"), start=1):
        file = (
            f"{parts[0]}-{parts[1]}-{kind}-{polarisation}-{parts[4]}-{parts[5]}-{parts[6]}-{parts[7]}-00{number}.tiff"
        )
        profile = dict(driver="GTiff", width=50, height=40, count=1, dtype="uint16", gcps=gcps, crs="EPSG:4326")
        with rasterio.open(product / "measurement" / file, "w", **profile) as dataset:
            dataset.write(np.full((1, 40, 50), 120 * number, np.uint16))
    if not zipped:
        return product
    archive = shutil.make_archive(str(product), "zip", root_dir=folder, base_dir=product.name)
    shutil.rmtree(product)
    return Path(archive)


@pytest.fixture
def stac_item_of() -> Callable[..., Path]:
    """``stac_item_of(s2, folder, *, raster_bands=None, **properties)``: :func:`write_stac_item`."""
    return write_stac_item


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    """This test's temporary folder, with builders (:class:`Workdir`)."""
    return Workdir(tmp_path)


@pytest.fixture
def write_release_triplet() -> Callable[..., Triplet]:
    """Write one triplet in the official nested layout: ``(root, season, roi, patch, *, size, seed, s1_bands,
    s1_size, s1_crs)``."""
    return _write_release_triplet


@pytest.fixture
def make_safe() -> Callable[..., Path]:
    """``make_safe(folder, *, level="L1C", baseline="02.04", shift=0, offsets=None, metadata=True)``: a tiny
    SAFE product (band JP2s at native resolution in the product's layout, and its metadata); returns it."""
    return _make_safe


@pytest.fixture
def write_jp2() -> Callable[[Path, np.ndarray, int], None]:
    """``write_jp2(path, array, resolution)``: a lossless single-band JP2 on the products' UTM 33N grid."""
    return _write_jp2


@pytest.fixture
def utm32n() -> CRS:
    """The CRS of every test raster (UTM zone 32N)."""
    return UTM32N


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``weights_file(variant)``: freshly initialised weights of a variant (seed 0), written once per session
    (inputs only: tests must not change them)."""
    folder = tmp_path_factory.mktemp("weights")

    @functools.cache
    def make(variant: str) -> Path:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return save_weights(create_model(variant), folder / f"{variant}.safetensors")

    return make


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-triplet synthetic tree of 96x96 patches (splits by ROI: train, val, test, train, train)."""
    from dsen2cr.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 10, size=96, seed=3)
    return root


def _run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run ``dsen2cr ARGS`` in a fresh Python process (the console entry point), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "dsen2cr.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*args, env=None, timeout=None)``: ``dsen2cr ARGS`` in a fresh Python process."""
    return _run_cli


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``bad_input`` runs once per row of its module's ``CASES`` table (ids: the rows'
    names)."""
    if "bad_input" in metafunc.fixturenames:
        rows = metafunc.module.CASES
        metafunc.parametrize("bad_input", [pytest.param(row, id=row["name"]) for row in rows])


@pytest.fixture
def check_case(workdir: Workdir, capsys: pytest.CaptureFixture) -> Callable[[dict], None]:
    """Run one row of a bad-input table through the console entry point, in-process. A row is a dict:
    ``name``; ``setup(workdir)``, which returns the argv; ``message``; optional ``keep``, ``absent`` (paths
    relative to the folder) and ``status`` (default 2). The command must exit with ``status`` and print one
    line on stderr (warnings aside) that contains ``message`` and no traceback; the files in ``keep`` stay byte
    for byte as they were; a path in ``absent`` is left as it was if it existed, else nothing is left there;
    and no pickle payload ran."""

    def check(row: dict) -> None:
        setup, message, status = row["setup"], row["message"], row.get("status", 2)
        keep, absent = row.get("keep", ()), row.get("absent", ())
        argv = setup(workdir)
        kept = {name: (workdir / name).read_bytes() for name in keep}
        kept.update({name: (workdir / name).read_bytes() for name in absent if (workdir / name).is_file()})
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own errors (type checks of options)
            code = exit_info.code
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if not line.startswith(("warning:", "usage:", " "))]
        assert code == status, err
        assert len(lines) == 1, err
        assert "Traceback" not in err
        assert message in lines[0], lines[0]
        for name, content in kept.items():
            assert (workdir / name).read_bytes() == content, f"{name} was changed"
        for name in absent:
            if name not in kept:
                assert not (workdir / name).exists(), f"{name} was left behind"
        assert not (workdir / "pwned").exists(), "the pickle payload ran"

    return check


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test sends Ctrl-C: SIGINT as a terminal delivers it. A shell without job
    control starts background commands with SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler, so a test suite run in the background (``make test &``) would see Ctrl-C ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminate_when(command: list[str], ready: Callable[[], bool], env: dict[str, str], timeout: float = 120) -> int:
    """Start ``dsen2cr COMMAND``, send SIGTERM once ``ready()``, return the exit status."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before it could be terminated"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    return process.returncode


@pytest.fixture
def terminate_when() -> Callable[..., int]:
    """``terminate_when(command, ready, env)``: start ``dsen2cr COMMAND`` in a process of its own, send it SIGTERM
    once ``ready()`` holds, return its exit status (no traceback allowed on stderr)."""
    return _terminate_when


@pytest.fixture
def stand_in_scontrol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An ``scontrol`` first on the PATH that records each command it is asked (``requeue 4242``) in the file
    whose path is returned, for SLURM's requeue without SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = bin_dir / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def private_tmp_env(workdir: Workdir) -> dict[str, str]:
    """The environment with ``TMPDIR`` a fresh folder of this test's, to check that nothing is left there."""
    private = workdir / "tmp"
    private.mkdir()
    return {**os.environ, "TMPDIR": str(private)}


@pytest.fixture(autouse=True, scope="session")
def private_compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests (and the CLI processes they start) keep compiled code and build records in a folder of their own,
    never in the user's ~/.cache/dsen2cr."""
    folder = tmp_path_factory.mktemp("dsen2cr-cache")
    os.environ["DSEN2CR_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(autouse=True)
def torch_threads_kept() -> Iterator[None]:
    """PyTorch's CPU threads as each test found them: a command run in-process fits them to the process's share of
    the machine (as a task of an srun step of two: 1 thread), and a test after it that compared weights trained
    in-process with a subprocess's then found other bits (other threads, other sums)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def machine_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[int | None], None]:
    """``machine_of(cores)``: this process sees a machine of ``cores`` CPUs (None: the count unknown) that it may
    use whole: all of them in its affinity, no container's or job's cgroup limits."""
    monkeypatch.setattr("dsen2cr.machine.PROC_CGROUP", tmp_path / "no-proc-self-cgroup")

    def of(cores: int | None) -> None:
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores or 1)))

    return of
