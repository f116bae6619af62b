"""``dsen2cr data patches``: your own scenes cut into SEN12MS-CR triplets of one ROI, checked against the scenes
read here with rasterio (pixels, georeferencing, the offset removed, what was left out), then indexed and trained
on; the re-run policy of a ROI's folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from dsen2cr.cli import main
from dsen2cr.data.layout import read_file_list
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S2_BANDS

UTM33N = CRS.from_epsg(32633)
ORIGIN = from_origin(400000, 5800000, 10, 10)


def _scenes(folder: Path) -> tuple[Path, Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 100 x 70 px cloudy scene stored with the baseline-04.00 offset (+1000 DN), a cloud-free one with no data
    in the top-middle 32 px patch and a cloud in the bottom-left one, and S1 with no data in the bottom-right one;
    the arrays as they should come out (the cloudy scene offset-free)."""
    rng = np.random.default_rng(7)
    cloudy = rng.integers(500, 9000, size=(13, 70, 100)).astype(np.uint16)
    clear = rng.integers(200, 1500, size=(13, 70, 100)).astype(np.uint16)  # dark enough to hold no cloud
    cloudy[10], clear[10] = rng.integers(5, 40, size=(2, 70, 100))  # B10 (cirrus) of a clear sky: tens of DN
    clear[:, 5:9, 40:45] = 0  # in patch 1 (row 0, column 1)
    clear[:, 32:64, 0:32] = 8000  # patch 3 (row 1, column 0) all white: a cloud by every test of the detector
    clear[10, 32:64, 0:32] = 20
    s1 = np.stack([rng.uniform(-20, -5, (70, 100)), rng.uniform(-28, -12, (70, 100))]).astype(np.float32)
    s1[:, 40:45, 70:75] = np.nan  # in patch 5 (row 1, column 2)
    paths = (
        write_geotiff(folder / "cloudy.tif", cloudy + 1000, crs=UTM33N, transform=ORIGIN),
        write_geotiff(folder / "clear.tif", clear, crs=UTM33N, transform=ORIGIN),
        write_geotiff(folder / "s1.tif", s1, crs=UTM33N, transform=ORIGIN),
    )
    return (*paths, cloudy, clear, s1)


def _patches(folder: Path, *extra: str) -> list[str]:
    return [
        "data", "patches", "--s2-cloudy", str(folder / "cloudy.tif"), "--s2-cloudy-offset", "-1000",
        "--s2", str(folder / "clear.tif"), "--s1", str(folder / "s1.tif"), "--out", str(folder / "own"),
        "--size", "32", "--no-progress", *extra,
    ]  # fmt: skip


def test_patches_are_the_scenes_windows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Six 32 px windows fit (3 columns of 100 px, 2 rows of 70); the two with no data and the one whose target
    holds a cloud are left out (kept with --max-target-cloud 1); the three written hold the scenes' pixels (the
    cloudy one's offset removed), on the window's grid, named as the release names patches, tagged with their
    source; data index lists them by ROI and train runs on them."""
    *_, cloudy, clear, s1 = _scenes(tmp_path)
    assert main(_patches(tmp_path, "--roi", "3")) == 0
    out = capsys.readouterr().out
    assert "wrote 3 patches of 32 px, ROI ROIs0_own/3" in out and "the inputs' cloud cover" in out
    assert "left out 3: no data in --s2 (1), --s2 cloudier than 10% (1), no data in --s1 (1)" in out
    own = tmp_path / "own"
    for number in (0, 2, 4):
        row, column = divmod(number, 3)
        window = Window(column * 32, row * 32, 32, 32)
        rows, columns = slice(row * 32, row * 32 + 32), slice(column * 32, column * 32 + 32)
        expected = {"s2_cloudy": cloudy, "s2": clear, "s1": s1}
        for sensor, array in expected.items():
            path = own / f"ROIs0_own_{sensor}" / f"{sensor}_3" / f"ROIs0_own_{sensor}_3_p{number}.tif"
            with rasterio.open(path) as patch:
                np.testing.assert_array_equal(patch.read(), array[:, rows, columns])
                assert patch.crs == UTM33N and patch.transform == window_transform(window, ORIGIN)
                assert patch.tags()["DSEN2CR_WINDOW"] == f"column {column * 32}, row {row * 32}, 32x32 px"
                assert patch.dtypes[0] == ("float32" if sensor == "s1" else "uint16")
    for number in (1, 3, 5):
        assert not list(own.rglob(f"*_p{number}.tif"))
    (tmp_path / "val.txt").write_text("ROIs0_own/4\n")
    assert main(_patches(tmp_path, "--roi", "4", "--max-target-cloud", "1")) == 0  # the cloudy target kept
    assert "wrote 4 patches of 32 px, ROI ROIs0_own/4" in capsys.readouterr().out
    index = ["data", "index", str(own), "--out", str(own / "files.csv"), "--val-rois", str(tmp_path / "val.txt")]
    assert main(index) == 0
    triplets = read_file_list(own / "files.csv", own)
    assert sorted((t.roi, t.split) for t in triplets) == [("ROIs0_own/3", 1)] * 3 + [("ROIs0_own/4", 2)] * 4
    run = ["train", "--config", "small-cpu", "--no-progress", f"data.root={own}", f"data.file_list={own / 'files.csv'}"]
    settings = ["optim.epochs=1", "data.crop_size=32", "data.repeats=1", "data.num_workers=0", "optim.batch_size=4"]
    assert main([*run, *settings, f"trainer.out_dir={tmp_path / 'run'}"]) == 0
    assert "epoch 0: train_loss_epoch" in capsys.readouterr().out


def test_a_rois_patches_are_replaced_only_with_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A ROI that holds patches is refused; --overwrite replaces them (an earlier run of another size too); a ROI
    folder holding anything else is refused even so, and no folder of the three is touched."""
    _scenes(tmp_path)
    assert main(_patches(tmp_path, "--roi", "1", "--size", "16")) == 0  # 6 x 4 windows: 2 with no data, 4 cloud
    folder = tmp_path / "own" / "ROIs0_own_s1" / "s1_1"
    assert len(list(folder.iterdir())) == 18
    capsys.readouterr()
    assert main(_patches(tmp_path, "--roi", "1")) == 2
    assert "s1_1: already holds the patches of ROI 1; pass --overwrite to replace it" in capsys.readouterr().err
    assert len(list(folder.iterdir())) == 18
    assert main(_patches(tmp_path, "--roi", "1", "--overwrite")) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"ROIs0_own_s1_1_p{n}.tif" for n in (0, 2, 4)]
    note = tmp_path / "own" / "ROIs0_own_s2_cloudy" / "s2_cloudy_1" / "notes.txt"
    note.write_text("mine")
    capsys.readouterr()
    assert main(_patches(tmp_path, "--roi", "1", "--overwrite")) == 2
    assert "holds 'notes.txt', which is not part of the patches of ROI 1" in capsys.readouterr().err
    assert len(list(folder.iterdir())) == 3 and note.read_text() == "mine"


def test_patches_of_products_have_their_offsets_removed(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Two SAFE products of one tile, the later of baseline 05.10 (declared -1000 in its metadata; stored 1100 DN
    above the earlier one, whose pixels it would be without the offset and 100 DN of change): the
    patches of both hold the bands at 10 m without the offset (B02 compared with its JP2 read here; B11, a 20 m
    band, with its JP2 read here and repeated onto the 10 m grid, as nearest neighbour does)."""
    before = workdir.safe("before")  # type: ignore[attr-defined]
    after = workdir.safe("after", baseline="05.10", shift=1100, offsets={i: -1000 for i in range(13)})  # type: ignore[attr-defined]
    grid = from_origin(399960, 5800020, 10, 10)
    s1 = np.stack([np.full((60, 60), -11.0), np.full((60, 60), -18.0)]).astype(np.float32)
    write_geotiff(workdir / "s1.tif", s1, crs=UTM33N, transform=grid)
    argv = ["data", "patches", "--s2-cloudy", str(after), "--s2", str(before), "--s1", str(workdir / "s1.tif")]
    options = ["--out", str(workdir / "own"), "--roi", "7", "--size", "32", "--max-target-cloud", "1"]
    assert main([*argv, *options, "--no-progress"]) == 0, capsys.readouterr().err
    assert "wrote 1 patch of 32 px" in capsys.readouterr().out  # 60 px: one 32 px window
    for sensor, product, shift in (("s2_cloudy", after, 1000), ("s2", before, 0)):
        jp2 = {band: next(product.rglob(f"*_{band}.jp2")) for band in ("B02", "B11")}
        with rasterio.open(jp2["B02"]) as b02, rasterio.open(jp2["B11"]) as b11:
            blue = b02.read(1, window=Window(0, 0, 32, 32)).astype(np.int64) - shift
            swir = np.repeat(np.repeat(b11.read(1, window=Window(0, 0, 16, 16)), 2, 0), 2, 1).astype(np.int64) - shift
        path = workdir / "own" / f"ROIs0_own_{sensor}" / f"{sensor}_7" / f"ROIs0_own_{sensor}_7_p0.tif"
        with rasterio.open(path) as patch:
            np.testing.assert_array_equal(patch.read(2), blue)
            np.testing.assert_array_equal(patch.read(12), swir)
            assert patch.tags()["DSEN2CR_SOURCE"] == product.name and patch.transform == grid
            tags = patch.tags()
            offsets = ",".join(f"{band}:-1000" for band in S2_BANDS) if shift else "none"
            assert tags["DSEN2CR_OFFSET_REMOVED"] == offsets  # what was removed, as the product declared it
            assert tags["DSEN2CR_OFFSET_SOURCE"] == "metadata"  # (02.04 declares none)
            assert tags["DSEN2CR_PROCESSING_BASELINE"] == ("05.10" if shift else "02.04")
            assert tags["DSEN2CR_PROCESSING_LEVEL"] == "L1C"
            assert tags["DSEN2CR_SENSING_TIME"] == "2023-06-10T10:15:59.024Z"  # the product metadata's
            assert tags["DSEN2CR_RESAMPLING"] == "nearest (20 m and 60 m bands onto the 10 m grid)"
    with rasterio.open(next((workdir / "own").rglob("*_s1_7_p0.tif"))) as patch:
        assert patch.tags()["DSEN2CR_S1_UNITS"] == "dB"


def test_skip_existing_refuses_patches_read_otherwise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Patches cut with the cloudy GeoTIFF's offset removed, or S1 read as dB, are not kept by a run that reads
    them otherwise (the offset left out, --s1-linear), nor by one with another --max-target-cloud: their files
    record how they were read and chosen, and the rerun names the difference; the same options keep them."""
    _scenes(tmp_path)
    assert main(_patches(tmp_path, "--roi", "1")) == 0
    with rasterio.open(next((tmp_path / "own").rglob("*_s2_cloudy_1_p0.tif"))) as patch:
        assert patch.tags()["DSEN2CR_OFFSET_REMOVED"] == ",".join(f"{band}:-1000" for band in S2_BANDS)
        assert patch.tags()["DSEN2CR_OFFSET_SOURCE"] == "option"
    capsys.readouterr()
    argv = _patches(tmp_path, "--roi", "1", "--skip-existing")
    without_offset = argv[: argv.index("--s2-cloudy-offset")] + argv[argv.index("--s2-cloudy-offset") + 2 :]
    assert main(without_offset) == 2
    err = capsys.readouterr().err
    assert "_s2_cloudy_1_p0.tif: recorded DSEN2CR_OFFSET_REMOVED 'B1:-1000," in err and "this run's is 'none'" in err
    s1 = tmp_path / "s1.tif"
    with rasterio.open(s1) as source:
        linear, profile = 10 ** (source.read() / 10), source.profile
    with rasterio.open(s1, "w", **profile) as target:  # the same values, stored as linear power
        target.write(linear)
    assert main([*argv, "--s1-linear"]) == 2
    assert "_s1_1_p0.tif: recorded DSEN2CR_S1_UNITS 'dB', this run's is 'linear power" in capsys.readouterr().err
    assert main([*argv[:-1], "--skip-existing", "--overwrite", "--s1-linear"]) == 0
    assert main([*argv, "--s1-linear"]) == 0
    assert "kept 3 that an earlier run wrote" in capsys.readouterr().out
    # a stricter limit on the target's clouds would leave out patches the earlier run kept: not kept silently
    assert main([*argv, "--s1-linear", "--max-target-cloud", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "_s2_1_p0.tif: recorded DSEN2CR_MAX_TARGET_CLOUD '0.1', this run's is '0.05'" in err


def test_a_failed_write_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are written on threads: a write that fails (a full disk, say) stops the run with its line, and the
    patches written before it, on any thread, are removed with the folders the run made."""
    import dsen2cr.data.patches as patches
    from dsen2cr.errors import DSen2CRError

    _scenes(tmp_path)
    write, calls = patches._write_files, []

    def fail_third(*args: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise DSen2CRError("own/…_p3.tif: cannot write (No space left on device)")
        write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(patches, "_write_files", fail_third)
    assert main(_patches(tmp_path, "--roi", "1", "--size", "16")) == 2
    assert "cannot write (No space left on device)" in capsys.readouterr().err
    assert not (tmp_path / "own").exists()
