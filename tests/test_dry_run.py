"""remove-clouds --dry-run: every scene checked as its run would check it, a refused one listed and the others
checked on, nothing written; what it says of the scenes that pass agrees with the run that follows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rasterio

from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff

S2_NAMES = ("T32TPT_20230610T101559_10m.tif", "T32TPT_20230620T101559_10m.tif", "T32TPT_20230630T101559_10m.tif")
S1_NAME = "S1A_IW_GRDH_1SDV_20230608T051234_20230608T051259_048901_05E1A2_3C4F_db.tif"  # 2.2 days before the first


def _scenes(workdir: Path, *, linear_second: bool) -> tuple[list[str], list[str]]:
    """Three scenes with S1 (the second's in linear power when ``linear_second``), and folders out/ and masks/."""
    s2, s1 = workdir.scene()
    for name in S2_NAMES:
        (workdir / name).write_bytes(s2.read_bytes())
    (workdir / S1_NAME).write_bytes(s1.read_bytes())
    with rasterio.open(s1) as dataset:
        linear = 10 ** (dataset.read() / 10)
        write_geotiff(workdir / "linear.tif", linear, crs=dataset.crs, transform=dataset.transform)
    second = "linear.tif" if linear_second else S1_NAME
    for folder in ("out", "masks"):
        (workdir / folder).mkdir()
    return [str(workdir / name) for name in S2_NAMES], [str(workdir / name) for name in (S1_NAME, second, S1_NAME)]


def _argv(workdir: Path, s2: list[str], s1: list[str], *extra: str) -> list[str]:
    weights = str(workdir.weights("dsen2cr-small"))
    return [
        *("remove-clouds", "--weights", weights, "--device", "cpu", "--no-progress", "--s2", *s2, "--s1", *s1),
        *("--out", f"{workdir / 'out'}/", "--mask-out", f"{workdir / 'masks'}/", "--tile", "32", *extra),
    ]


def _everything_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_refused_scene_is_listed_and_the_others_checked(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2, s1 = _scenes(workdir, linear_second=True)
    argv = _argv(workdir, s2, s1, "--dry-run")  # (the weights written)
    before = _everything_in(workdir)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith(("would write", "refused"))]
    assert len(lines) == 3, captured.out
    first = workdir / "out" / "T32TPT_20230610T101559_10m_cloudfree.tif"
    assert lines[0].startswith(
        f"would write {first}: 50x40 px of {S2_NAMES[0]} (L1C, sensed 2023-06-10T10:15:59Z), S1 2.2 days before S2, "
    )
    assert lines[0].endswith(f"; also {workdir / 'masks' / 'T32TPT_20230610T101559_10m_cloudfree_mask.tif'} (mask)")
    assert lines[1].startswith("refused: ") and "linear.tif: S1 values look like linear power" in lines[1]
    assert lines[2].startswith(f"would write {workdir / 'out' / 'T32TPT_20230630T101559_10m_cloudfree.tif'}: ")
    assert "S1 22.2 days before S2" in lines[2]  # June 8 to June 30, at the same times of day as the first
    errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert errors == [
        "dsen2cr remove-clouds: error: --dry-run: 1 of 3 scenes would be refused (listed above); nothing was written"
    ]
    assert _everything_in(workdir) == before  # nothing written, no lock or temporary file left
    assert _everything_in(workdir / "out") == [] and _everything_in(workdir / "masks") == []


def test_what_it_says_is_what_the_run_does(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2, s1 = _scenes(workdir, linear_second=False)
    capsys.readouterr()
    assert main(_argv(workdir, s2, s1, "--dry-run")) == 0
    dry = capsys.readouterr().out
    assert "dry run: 3 scenes checked; nothing was written" in dry
    assert _everything_in(workdir / "out") == []
    said = dict(re.findall(r"would write (\S+): .*, (\d+) windows?", dry))
    assert main(_argv(workdir, s2, s1)) == 0
    ran = dict(re.findall(r"wrote (\S+): .*\((?:[\d.]+) Mpx/s, (\d+) tiles?", capsys.readouterr().out))
    assert said == ran and len(ran) == 3
    assert all(int(count) > 1 for count in said.values())  # 50 x 40 px in windows of at most 32 px
    # with --skip-existing, the scenes just written are left out
    assert main(_argv(workdir, s2, s1, "--dry-run", "--skip-existing")) == 0
    again = capsys.readouterr().out
    assert "dry run: 0 scenes checked; nothing was written" in again
    assert again.count("an earlier run finished it (--skip-existing)") == 3


def test_a_run_wide_refusal_stops_it_as_it_stops_a_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2, s1 = _scenes(workdir, linear_second=False)
    (workdir / "out" / "T32TPT_20230620T101559_10m_cloudfree.tif").write_bytes(b"earlier")
    capsys.readouterr()
    assert main(_argv(workdir, s2, s1, "--dry-run")) == 2
    captured = capsys.readouterr()
    assert "would write" not in captured.out
    assert "T32TPT_20230620T101559_10m_cloudfree.tif: exists" in captured.err
    assert (workdir / "out" / "T32TPT_20230620T101559_10m_cloudfree.tif").read_bytes() == b"earlier"
    assert _everything_in(workdir / "out") == ["T32TPT_20230620T101559_10m_cloudfree.tif"]
