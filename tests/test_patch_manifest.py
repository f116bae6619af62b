"""``dsen2cr data patches --manifest``: many scene pairs, a ROI each, in one run. The patches are checked against
the scenes read here with rasterio; every row is checked before the first patch is written; a failure mid-run
keeps the rows before it and names its row; rows of overlapping ground are warned."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff

UTM33N = CRS.from_epsg(32633)


def _pair(folder: Path, name: str, *, origin_x: float, seed: int, offset: int = 0) -> dict[str, np.ndarray]:
    """A 64 x 32 px scene pair and S1 in ``folder/name/`` on a grid whose west edge is ``origin_x``: a cloudy scene
    stored with ``offset`` added, a dark cloud-free one and S1; the arrays as the patches should hold them."""
    rng = np.random.default_rng(seed)
    cloudy = rng.integers(500, 9000, size=(13, 32, 64)).astype(np.uint16)
    clear = rng.integers(200, 1500, size=(13, 32, 64)).astype(np.uint16)  # holds no cloud by the detector
    cloudy[10], clear[10] = rng.integers(5, 40, size=(2, 32, 64))  # B10 of a clear sky
    s1 = np.stack([rng.uniform(-20, -5, (32, 64)), rng.uniform(-28, -12, (32, 64))]).astype(np.float32)
    grid = {"crs": UTM33N, "transform": from_origin(origin_x, 5800000, 10, 10)}
    (folder / name).mkdir()
    write_geotiff(folder / name / "cloudy.tif", cloudy + offset, **grid)
    write_geotiff(folder / name / "clear.tif", clear, **grid)
    write_geotiff(folder / name / "s1.tif", s1, **grid)
    return {"s2_cloudy": cloudy, "s2": clear, "s1": s1}


def _patch(out: Path, sensor: str, roi: int, number: int) -> np.ndarray:
    with rasterio.open(
        out / f"ROIs0_own_{sensor}" / f"{sensor}_{roi}" / f"ROIs0_own_{sensor}_{roi}_p{number}.tif"
    ) as f:
        return f.read()


def test_a_manifest_cuts_each_row_into_its_roi(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Three rows (header in its own case and spacing, paths relative to the manifest, one row's cloudy GeoTIFF
    with the baseline-04.00 offset declared in its column): each ROI holds its pair's two 32 px windows, pixel for
    pixel, the offset removed; rows 2 and 4 lie on one grid and are warned as overlapping ground, row 3 lies
    100 km east and is not; data index then lists the three ROIs."""
    first = _pair(tmp_path, "a", origin_x=400000, seed=1)
    east = _pair(tmp_path, "b", origin_x=500000, seed=2, offset=1000)
    again = _pair(tmp_path, "c", origin_x=400000, seed=3)
    (tmp_path / "pairs.csv").write_text(
        " S2_Cloudy , s2,s1, ROI ,s2_cloudy_offset\n"
        "a/cloudy.tif,a/clear.tif,a/s1.tif,7,\n"
        "b/cloudy.tif,b/clear.tif,b/s1.tif,8,-1000\n"
        "c/cloudy.tif,c/clear.tif,c/s1.tif,9,\n"
    )
    out = tmp_path / "own"
    with caplog.at_level(logging.WARNING):
        argv = ["data", "patches", "--manifest", str(tmp_path / "pairs.csv"), "--out", str(out), "--size", "32"]
        code = main([*argv, "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for roi in (7, 8, 9):
        assert f"wrote 2 patches of 32 px, ROI ROIs0_own/{roi}," in printed
    assert "wrote 6 patches of 3 ROIs under" in printed
    for roi, arrays in ((7, first), (8, east), (9, again)):
        for number in (0, 1):
            columns = slice(32 * number, 32 * number + 32)
            for sensor, array in arrays.items():
                np.testing.assert_array_equal(_patch(out, sensor, roi, number), array[:, :, columns])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    overlapping = [message for message in warnings if "overlapping ground" in message]
    assert len(overlapping) == 1 and "rows 2, 4 (ROIs 7, 9)" in overlapping[0], warnings
    assert main(["data", "index", str(out), "--out", str(out / "files.csv")]) == 0
    assert len((out / "files.csv").read_text().splitlines()) == 6


def test_every_row_is_checked_before_the_first_patch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Row 3's ROI holds an earlier run's patches: the run is refused naming that row before row 2 is cut (its
    ROI's folders are never made), the earlier patches stay as they were; with --overwrite both rows are cut."""
    _pair(tmp_path, "a", origin_x=400000, seed=1)
    _pair(tmp_path, "b", origin_x=500000, seed=2)
    out = tmp_path / "own"
    single = ["data", "patches", "--s2-cloudy", str(tmp_path / "b/cloudy.tif"), "--s2", str(tmp_path / "b/clear.tif")]
    assert main([*single, "--s1", str(tmp_path / "b/s1.tif"), "--roi", "2", "--out", str(out), "--size", "16"]) == 0
    earlier = {path: path.read_bytes() for path in out.rglob("*.tif")}
    assert len(earlier) == 3 * 8
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "s2_cloudy,s2,s1,roi\na/cloudy.tif,a/clear.tif,a/s1.tif,1\nb/cloudy.tif,b/clear.tif,b/s1.tif,2\n"
    )
    argv = ["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "32", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:3: " in err and "pass --overwrite" in err, err
    assert not list(out.rglob("*_1")) and {path: path.read_bytes() for path in out.rglob("*.tif")} == earlier
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(path.name for path in out.rglob("ROIs0_own_s1_*.tif")) == [
        "ROIs0_own_s1_1_p0.tif", "ROIs0_own_s1_1_p1.tif", "ROIs0_own_s1_2_p0.tif", "ROIs0_own_s1_2_p1.tif",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("failing", "ending"),
    [(1, "the row before it stays written (ROI 0)"), (2, "the rows before it stay written (ROIs 0, 1)")],
)
def test_a_failure_mid_run_keeps_the_rows_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, failing: int, ending: str
) -> None:
    """A write of row 3 (or 4) fails (a full disk): the run stops with one line naming the row and the ROIs written
    before it; their patches are whole, the failing row's ROI leaves nothing, the rows after it are not begun."""
    import dsen2cr.data.patches as patches
    from dsen2cr.errors import DSen2CRError

    for name, origin in (("a", 400000), ("b", 500000), ("c", 600000)):
        _pair(tmp_path, name, origin_x=origin, seed=origin)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "s2_cloudy,s2,s1,roi\n"
        + "".join(f"{n}/cloudy.tif,{n}/clear.tif,{n}/s1.tif,{roi}\n" for roi, n in enumerate("abc"))
    )
    write = patches._write_files

    def fail_in_roi(paths: dict[str, Path], *args: object) -> None:
        if f"_{failing}_p" in paths["s1"].name:
            raise DSen2CRError(f"{paths['s1']}: cannot write (No space left on device)")
        write(paths, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(patches, "_write_files", fail_in_roi)
    out = tmp_path / "own"
    capsys.readouterr()
    assert (
        main(["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "32", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert f"error: {manifest}:{failing + 2}: " in err and err.endswith(ending), err
    for roi in range(failing):
        assert len(list(out.rglob(f"*_{roi}_p*.tif"))) == 6
    assert not any(list(out.rglob(f"*_{roi}*")) for roi in range(failing, 3))


def _files(out: Path) -> dict[Path, tuple[bytes, int]]:
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(out.rglob("*.tif"))}


def test_skip_existing_goes_on_where_a_stopped_run_left(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run stopped in row 2 (ROI 1: one patch's cloud-free file never written) before row 3: --skip-existing keeps
    ROI 0 and ROI 1's whole patch file for file (bytes, modification time), writes ROI 1's missing patch (the
    scene's window, pixel for pixel) and ROI 2; patches of other scenes or another size are refused."""
    arrays = [
        _pair(tmp_path, name, origin_x=origin, seed=seed)
        for name, origin, seed in (("a", 4e5, 1), ("b", 5e5, 2), ("c", 6e5, 3))
    ]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "s2_cloudy,s2,s1,roi\n"
        + "".join(f"{n}/cloudy.tif,{n}/clear.tif,{n}/s1.tif,{roi}\n" for roi, n in enumerate("abc"))
    )
    out = tmp_path / "own"
    argv = ["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "32", "--no-progress"]
    assert main(argv) == 0
    for folder in list(out.rglob("*_2")):  # row 3 not begun
        shutil.rmtree(folder)
    (out / "ROIs0_own_s2" / "s2_1" / "ROIs0_own_s2_1_p1.tif").unlink()  # stopped inside row 2
    before = _files(out)
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert "ROI ROIs0_own/0, under" in said and "wrote 0 patches" in said and "kept 2 that an earlier run wrote" in said
    assert f"wrote 3 patches of 3 ROIs under {out}; kept 3 that an earlier run wrote" in said  # ROI 1: 1 + 1, ROI 2: 2
    after = _files(out)
    assert {path: after[path] for path in before if "_1_p1" not in path.name} == {
        path: value for path, value in before.items() if "_1_p1" not in path.name
    }  # kept: bytes and modification times
    assert len(after) == 18
    np.testing.assert_array_equal(_patch(out, "s2", 1, 1), arrays[1]["s2"][:, :, 32:64])
    np.testing.assert_array_equal(_patch(out, "s1", 2, 0), arrays[2]["s1"][:, :, 0:32])
    # patches of other scenes (row 2 now cut from c's scenes) or of another size: refused, nothing changed
    manifest.write_text(
        "s2_cloudy,s2,s1,roi\n"
        + "".join(f"{n}/cloudy.tif,{n}/clear.tif,{n}/s1.tif,{roi}\n" for roi, n in enumerate("acc"))
    )
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 2
    err = capsys.readouterr().err
    # (the scenes of b and c have the same file names: the patches' georeferencing tells them apart)
    assert f"{manifest}:3: " in err, err
    assert "ROIs0_own_s1_1_p0.tif: lies at 500000.0, 5800000.0, where this run's patch of its number does not" in err
    manifest.write_text(
        "s2_cloudy,s2,s1,roi\n"
        + "".join(f"{n}/cloudy.tif,{n}/clear.tif,{n}/s1.tif,{roi}\n" for roi, n in enumerate("abc"))
    )
    assert main([*argv[:-3], "--size", "16", "--no-progress", "--skip-existing"]) == 2
    err = capsys.readouterr().err
    assert "ROIs0_own_s1_0_p0.tif: 32x32 px, this run cuts 16 px patches: --skip-existing keeps only the patches" in err
    assert _files(out) == after


def test_skip_existing_with_overwrite_cuts_again_what_was_cut_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """One pair cut, then given again under another name: --skip-existing refuses its patches (they record the
    other name); with --overwrite too, the ROI is cut again, as --overwrite alone would."""
    _pair(tmp_path, "a", origin_x=400000, seed=1)
    shutil.copy(tmp_path / "a" / "cloudy.tif", tmp_path / "a" / "cloudy2.tif")
    base = ["data", "patches", "--s2", str(tmp_path / "a/clear.tif"), "--s1", str(tmp_path / "a/s1.tif"), "--roi", "4"]
    argv = [*base, "--out", str(tmp_path / "own"), "--size", "32", "--no-progress"]
    assert main([*argv, "--s2-cloudy", str(tmp_path / "a/cloudy.tif")]) == 0
    capsys.readouterr()
    again = [*argv, "--s2-cloudy", str(tmp_path / "a/cloudy2.tif"), "--skip-existing"]
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "ROIs0_own_s2_cloudy_4_p0.tif: cut from cloudy.tif, this run cuts from cloudy2.tif: --skip-existing" in err
    assert main([*again, "--overwrite"]) == 0
    assert "wrote 2 patches" in capsys.readouterr().out
    with rasterio.open(tmp_path / "own/ROIs0_own_s2_cloudy/s2_cloudy_4/ROIs0_own_s2_cloudy_4_p1.tif") as patch:
        assert patch.tags()["DSEN2CR_SOURCE"] == "cloudy2.tif"
