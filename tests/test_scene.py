"""Whole-scene inference: seamless tiling (equal to whole-image inference), georeferencing, nodata, S1
warping and coverage, product folders, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr import create_model
from dsen2cr.data.synth import add_synthetic_clouds, synthetic_clear_scene
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.models import VARIANTS
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.predictor import predictor_from_model
from dsen2cr.preprocessing import S2_BANDS, s1_db_to_model, s2_dn_to_model
from dsen2cr.scene.batches import iter_predictions
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.scene.tiles import default_overlap, plan_tiles
from dsen2cr.settings import SceneJob, SceneSettings
from dsen2cr.weights import save_weights

UTM = CRS.from_epsg(32632)
ORIGIN = from_origin(500000, 5000000, 10, 10)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An odd-sized (389 x 517) scene with S1 on the same grid, and a perturbed small model."""
    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    clear, s1 = synthetic_clear_scene((389, 517), rng)
    cloudy, _ = add_synthetic_clouds(clear, rng)
    write_geotiff(folder / "s2.tif", cloudy, crs=UTM, transform=ORIGIN)
    write_geotiff(folder / "s1.tif", s1, crs=UTM, transform=ORIGIN)
    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    with torch.no_grad():  # non-zero biases and a non-trivial correction
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    weights = save_weights(model, folder / "small.safetensors")
    return {"folder": folder, "s2": cloudy, "s1": s1, "model": model, "weights": weights}


def _whole_image(model: torch.nn.Module, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        s1_t = None if s1 is None else torch.from_numpy(s1_db_to_model(s1))[None]
        return model(torch.from_numpy(s2_dn_to_model(s2))[None], s1_t)[0].numpy()


@pytest.mark.parametrize("tile", [64, 128, 300])
def test_tiling_equals_whole_image_inference(scene: dict, tile: int) -> None:
    model = scene["model"]
    expected = _whole_image(model, scene["s2"], scene["s1"])
    s2 = S2Source(scene["folder"] / "s2.tif")
    s1 = S1Source(scene["folder"] / "s1.tif", s2.grid)
    tiles = plan_tiles(389, 517, tile, default_overlap(model))
    got = np.full_like(expected, np.nan)
    covered = np.zeros(expected.shape[1:], dtype=int)
    predictions = iter_predictions(predictor_from_model(model), s2, s1, tiles, batch_size=3, s1_fill_db=lambda: (0, 0))
    for t, pred, *_ in predictions:
        rows = slice(t.core.row_off, t.core.row_off + t.core.height)
        cols = slice(t.core.col_off, t.core.col_off + t.core.width)
        got[:, rows, cols] = pred
        covered[rows, cols] += 1
    assert (covered == 1).all(), "every pixel comes from exactly one tile core"
    assert np.abs(got - expected).max() <= 1e-4


def test_too_small_overlap_shows_seams(scene: dict) -> None:
    model = scene["model"]
    expected = _whole_image(model, scene["s2"], scene["s1"])
    s2 = S2Source(scene["folder"] / "s2.tif")
    s1 = S1Source(scene["folder"] / "s1.tif", s2.grid)
    got = np.zeros_like(expected)
    for t, pred, *_ in iter_predictions(
        predictor_from_model(model), s2, s1, plan_tiles(389, 517, 128, 0), batch_size=4, s1_fill_db=lambda: (0, 0)
    ):
        got[:, t.core.row_off : t.core.row_off + t.core.height, t.core.col_off : t.core.col_off + t.core.width] = pred
    assert np.abs(got - expected).max() > 1e-3  # the test above can fail


def test_remove_clouds_writes_a_georeferenced_cog(
    scene: dict, tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    out = tmp_path / "out.tif"
    result = run_cli(
        "remove-clouds",
        "--weights",
        str(scene["weights"]),
        "--s2",
        str(scene["folder"] / "s2.tif"),
        "--s1",
        str(scene["folder"] / "s1.tif"),
        "--out",
        str(out),
        "--tile",
        "128",
        "--mask-out",
        str(tmp_path / "mask.tif"),
        "--preview",
        str(tmp_path / "preview.png"),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    # the result line names every file the scene wrote (it named the image alone)
    assert f"; also {tmp_path / 'mask.tif'} (mask), {tmp_path / 'preview.png'} (preview)\n" in result.stdout
    with rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.count, dst.dtypes[0], dst.nodata) == (UTM, ORIGIN, 13, "uint16", 0)
        assert dst.descriptions == S2_BANDS and dst.profile["tiled"] and dst.overviews(1) == [2, 4]
        written = dst.read().astype(np.float64)
        halved = dst.read(out_shape=(13, 195, 259)).astype(np.float64)
    # the 2x overview, made while the windows were written (#27): the mean of each 2x2 block's valid pixels
    # (389 x 517: the last row and column of blocks hold two pixels, or one)
    padded = np.zeros((13, 390, 518))
    padded[:, :389, :517] = written
    blocks = padded.reshape(13, 195, 2, 259, 2)
    counts = (blocks > 0).sum(axis=(2, 4))
    np.testing.assert_array_equal(halved, np.floor(blocks.sum(axis=(2, 4)) / np.maximum(counts, 1) + 0.5))
    expected = np.clip(np.rint(_whole_image(scene["model"], scene["s2"], scene["s1"]) * 2000), 1, 10000)
    assert np.abs(written - expected).max() <= 1
    with rasterio.open(tmp_path / "mask.tif") as mask:
        assert mask.dtypes[0] == "uint8" and set(np.unique(mask.read())) <= {0, 1, 2}
        # what a GIS reads (#29): nodata, a colour table, class names, overviews of the most common class
        assert (
            mask.nodata == 255
            and mask.colormap(1)[1][:3] == (255, 255, 255)
            and mask.colormap(1)[2][:3]
            == (
                30,
                30,
                110,
            )
        )
        assert mask.tags(1)["CATEGORIES"] == "0 clear, 1 cloud, 2 shadow, 255 no data" and mask.overviews(1)
        assert mask.descriptions[0].startswith("cloud/shadow map (paper)")
    assert (tmp_path / "preview.png").stat().st_size > 1000
    with rasterio.open(out) as dst:  # band statistics in the file (#29), of the valid pixels, as numpy gives them
        band = dst.read(3).astype(np.float64)
        tags = dst.tags(3)
    valid = band[band != 0]
    assert float(tags["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-6)
    assert float(tags["STATISTICS_MAXIMUM"]) == valid.max() and float(tags["STATISTICS_STDDEV"]) == pytest.approx(
        valid.std(), rel=1e-4
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "out.tif", "preview.png"]


def test_zstd_cog_holds_the_same_pixels(scene: dict, tmp_path: Path) -> None:
    """``--compress zstd`` writes a zstd Cloud-Optimised GeoTIFF (as GDAL reads its layout back) whose pixels
    and overviews are those of the default deflate output: lossless either way."""
    s2, s1 = str(scene["folder"] / "s2.tif"), str(scene["folder"] / "s1.tif")
    predictor = predictor_from_model(scene["model"])
    deflate, zstd = tmp_path / "deflate.tif", tmp_path / "zstd.tif"
    remove_clouds(predictor, SceneJob(s2, s1, deflate), SceneSettings(tile=128, progress=False))
    remove_clouds(
        predictor,
        SceneJob(s2, s1, zstd),
        SceneSettings(tile=128, progress=False, compression="zstd", compression_level=1),
    )
    for path, name in ((deflate, "DEFLATE"), (zstd, "ZSTD")):
        with rasterio.open(path) as dataset:
            structure = dataset.tags(ns="IMAGE_STRUCTURE")
            assert (structure["LAYOUT"], structure["COMPRESSION"], structure["PREDICTOR"]) == ("COG", name, "2")
            assert dataset.overviews(1) == [2, 4]
    with rasterio.open(deflate) as a, rasterio.open(zstd) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.read(out_shape=(13, 195, 259)), b.read(out_shape=(13, 195, 259)))
        assert (a.crs, a.transform, a.descriptions, a.tags()) == (b.crs, b.transform, b.descriptions, b.tags())
    with pytest.raises(DSen2CRError, match=r"compression: expected one of deflate, zstd, got 'lzw'"):
        remove_clouds(predictor, SceneJob(s2, s1, tmp_path / "lzw.tif"), SceneSettings(compression="lzw"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deflate.tif", "zstd.tif"]


def test_a_compression_gdal_cannot_write_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """GDAL only warns about a compression it lacks and writes the file uncompressed: the options are tried on a
    small image first, and the run refused."""
    import dsen2cr.outputs.geotiff

    monkeypatch.setitem(dsen2cr.outputs.geotiff.COG_COMPRESSION_LEVELS, "nosuch", range(1, 2))
    with pytest.raises(DSen2CRError, match=r"compression nosuch: this GDAL \(.*\) cannot write it"):
        dsen2cr.outputs.geotiff.cog_options("nosuch")
    assert dsen2cr.outputs.geotiff.cog_options("zstd", 1)["LEVEL"] == "1"


def test_nodata_stays_nodata_and_partial_s1_warns(
    scene: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s2 = scene["s2"].copy()
    s2[:, :40, :60] = 0  # nodata corner
    write_geotiff(tmp_path / "s2.tif", s2, crs=UTM, transform=ORIGIN)
    # S1 in another CRS and at 20 m covering only the western half of the scene
    s1 = scene["s1"][:, ::2, : 517 // 4]
    west = from_origin(500000, 5000000, 20, 20)
    write_geotiff(tmp_path / "s1.tif", np.ascontiguousarray(s1), crs=UTM, transform=west)
    report = remove_clouds(
        predictor_from_model(scene["model"]),
        SceneJob(str(tmp_path / "s2.tif"), str(tmp_path / "s1.tif"), tmp_path / "out.tif"),
        SceneSettings(tile=128, overlap=20, progress=False),
    )
    assert 0.4 < report.s1_missing_fraction < 0.6
    assert "S1 has no data under" in caplog.text
    with rasterio.open(tmp_path / "out.tif") as dst:
        out, recorded = dst.read(), dst.tags().get("DSEN2CR_WARNINGS", "")
    assert (out[:, :40, :60] == 0).all() and (out[:, 40:, 60:] > 0).all()
    assert recorded.startswith("s1.tif: S1 has no data under")  # the image says it too, by the file's name


def _write_linear_s1(scene: dict, path: Path) -> None:
    write_geotiff(path, (10 ** (scene["s1"] / 10)).astype(np.float32), crs=UTM, transform=ORIGIN)


def test_s1_linear_power_refused_or_converted(scene: dict, tmp_path: Path) -> None:
    _write_linear_s1(scene, tmp_path / "lin.tif")
    grid = S2Source(scene["folder"] / "s2.tif").grid
    with pytest.raises(DSen2CRError, match=r"lin.tif: S1 values look like linear power .* pass --s1-linear"):
        S1Source(tmp_path / "lin.tif", grid)
    converted = S1Source(tmp_path / "lin.tif", grid, linear=True).read(rasterio.windows.Window(0, 0, 50, 40))
    np.testing.assert_allclose(converted, scene["s1"][:, :40, :50], atol=1e-3)


def test_product_folder_bands_resampled_onto_10m(scene: dict, tmp_path: Path) -> None:
    folder = tmp_path / "IMG_DATA"
    folder.mkdir()
    s2 = scene["s2"][:, :360, :480]
    resolution = {"B1": 60, "B9": 60, "B10": 60, "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20, "B12": 20}
    for index, band in enumerate(S2_BANDS):
        factor = resolution.get(band, 10) // 10
        data = s2[index, ::factor, ::factor][None]
        code = band[0] + band[1:].zfill(2)
        write_geotiff(
            folder / f"T32TST_20200101T000000_{code}.tif",
            np.ascontiguousarray(data),
            crs=UTM,
            transform=from_origin(500000, 5000000, 10 * factor, 10 * factor),
        )
    source = S2Source(folder)
    assert (source.grid.width, source.grid.height) == (480, 360)
    window = source.read(rasterio.windows.Window(0, 0, 480, 360))
    expected = np.stack(
        [
            np.kron(s2[i, ::f, ::f], np.ones((f, f), np.uint16))
            for i, f in enumerate(resolution.get(b, 10) // 10 for b in S2_BANDS)
        ]
    )
    np.testing.assert_array_equal(window, expected)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("s2_bands", r"S2 has 2 bands, expected 13"),
        ("s1_bands", r"S1 \(VV, VH\) has 13 bands, expected 2"),
        ("no_overlap", r"S1 does not overlap the S2 scene at all"),
        ("no_s1", r"these weights need SAR input; pass --s1"),
        ("exists", r"out.tif: exists; pass --overwrite"),
        ("truncated", r"s2.tif: cannot read"),
        ("missing_dir", r"output folder .* does not exist"),
        ("compress_level", r"--compress-level: zstd takes 1 to 22, got 23"),
    ],
)
def test_bad_input(scene: dict, tmp_path: Path, case: str, message: str) -> None:
    s2, s1, out = scene["folder"] / "s2.tif", scene["folder"] / "s1.tif", tmp_path / "out.tif"
    if case == "s2_bands":
        s2 = s1
    elif case == "s1_bands":
        s1 = scene["folder"] / "s2.tif"
    elif case == "no_overlap":
        s1 = tmp_path / "far.tif"
        write_geotiff(s1, scene["s1"], crs=UTM, transform=from_origin(900000, 5000000, 10, 10))
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "truncated":
        data = s2.read_bytes()
        s2 = tmp_path / "s2.tif"
        s2.write_bytes(data[: len(data) // 3])
    elif case == "missing_dir":
        out = tmp_path / "nowhere" / "out.tif"
    args = [
        sys.executable,
        "-m",
        "dsen2cr.cli",
        "remove-clouds",
        "--weights",
        str(scene["weights"]),
        "--s2",
        str(s2),
        "--out",
        str(out),
        "--no-progress",
    ]
    if case != "no_s1":
        args += ["--s1", str(s1)]
    if case == "compress_level":
        args += ["--compress", "zstd", "--compress-level", "23"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not [p for p in out.parent.glob(".*tmp*")] if out.parent.exists() else True


def test_manifest_with_several_scenes(
    scene: dict, tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    manifest = tmp_path / "scenes.csv"
    s2, s1 = scene["folder"] / "s2.tif", scene["folder"] / "s1.tif"
    manifest.write_text(
        f"s2,s1,out,mask_out\n{s2},{s1},{tmp_path / 'a.tif'},{tmp_path / 'a_mask.tif'}\n"
        f"{s2},{s1},{tmp_path / 'b.tif'},\n"
    )
    result = run_cli("remove-clouds", "--weights", str(scene["weights"]), "--manifest", str(manifest), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 2
    assert {p.name for p in tmp_path.glob("*.tif")} == {"a.tif", "a_mask.tif", "b.tif"}
    manifest.write_text("s1,out\nx.tif,y.tif\n")  # an s1 column may be left out (no SAR), never an s2 one
    bad = run_cli("remove-clouds", "--weights", str(scene["weights"]), "--manifest", str(manifest))
    assert bad.returncode == 2 and "manifest header lacks s2" in bad.stderr


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_a_runs_ranks_split_the_scenes_and_lock_their_own(
    scene: dict, tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess], launcher: str
) -> None:
    """Rank 1 of 2, started by torchrun or as task 1 of an ``srun`` step (a batch job's way, no torchrun), takes
    every second scene of the manifest. Each rank writes outputs of its own, so each locks them: a live run on
    rank 1's scene is refused there (rank 1 took no lock, and wrote beside that run)."""
    import os
    import socket

    s2, s1 = scene["folder"] / "s2.tif", scene["folder"] / "s1.tif"
    manifest = tmp_path / "scenes.csv"
    manifest.write_text("s2,s1,out\n" + "".join(f"{s2},{s1},{tmp_path / f'{n}.tif'}\n" for n in "abc"))
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
    env = {name: value for name, value in os.environ.items() if name not in names}
    if launcher == "torchrun":
        env.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    else:
        env.update(SLURM_PROCID="1", SLURM_LOCALID="1", SLURM_NODEID="0", SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2")
    args = ("remove-clouds", "--weights", str(scene["weights"]), "--manifest", str(manifest), "--no-progress")
    lock = tmp_path / ".b.tif.lock"
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # this test's process: a live run on b.tif
    refused = run_cli(*args, env=env)
    assert refused.returncode == 2 and "b.tif" in refused.stderr and str(os.getpid()) in refused.stderr
    assert not list(tmp_path.glob("*.tif"))
    lock.unlink()
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.glob("*.tif")} == {"b.tif"}  # rank 1 of 2 takes every second scene
    assert not list(tmp_path.glob(".*.lock"))


def test_a_rank_without_a_scene_says_so_and_loads_nothing(
    scene: dict, tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """Rank 1 of 2 with one scene to share: it said nothing, loaded the model and planned tiles for no scene
    (each idle task of ``srun --ntasks 8`` over 3 scenes did that); now one line, nothing loaded, exit 0."""
    import os

    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")
    env = {name: value for name, value in os.environ.items() if name not in names}
    env.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    out = tmp_path / "a.tif"
    result = run_cli(
        "remove-clouds", "--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif"),
        "--s1", str(scene["folder"] / "s1.tif"), "--out", str(out), "--no-progress", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "torchrun: rank 1 of 2 takes 0 of the 1 scenes" in result.stdout
    assert "tiles:" not in result.stdout and not out.exists()
    env.update(RANK="0")
    result = run_cli("remove-clouds", "--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif"),
                     "--s1", str(scene["folder"] / "s1.tif"), "--out", str(out), "--no-progress", env=env)  # fmt: skip
    assert result.returncode == 0 and "rank 0 of 2 takes 1 of the 1 scenes" in result.stdout and out.is_file()


@pytest.mark.parametrize("ranks", [None, "1", "4"])
def test_a_torchruns_processes_share_the_machine(
    monkeypatch: pytest.MonkeyPatch, machine_of: Callable[[int | None], None], ranks: str | None
) -> None:
    """Under torchrun (one process per GPU, ``LOCAL_WORLD_SIZE`` on the machine) each process takes its share
    of the machine's cores and memory for its threads and GDAL's block cache; alone, all of them as before.
    16 cores and 16 GiB: alone 13 band threads, 8 finishing, 16 compressing, GDAL on all CPUs, a 1 GiB cache;
    one of four: 4 cores, 4 GiB (band 4, finishing 2, compressing 4, GDAL 4 threads, cache 512 MiB)."""
    from types import SimpleNamespace

    import rasterio.env

    from dsen2cr import auto
    from dsen2cr.outputs.geotiff import cog_options, compression_threads
    from dsen2cr.rasters import gdal_block_cache

    machine_of(16)
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(total=16 * 2**30))
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    gpu = torch.device("cuda")
    shared = ranks == "4"
    assert auto.resolve_band_threads(gpu) == (4 if shared else 13)
    assert auto.resolve_finish_threads(gpu) == (2 if shared else 8)
    assert compression_threads() == (4 if shared else 16)
    assert auto.resolve_block_cache_bytes(gpu) == (512 if shared else 1024) * 2**20
    assert cog_options()["NUM_THREADS"] == ("4" if shared else "ALL_CPUS")
    with gdal_block_cache():
        assert rasterio.env.getenv()["GDAL_NUM_THREADS"] == ("4" if shared else "ALL_CPUS")
    cpu = torch.device("cpu")  # a CPU run is one process per machine's worth of cores: unchanged
    assert (auto.resolve_band_threads(cpu), auto.resolve_finish_threads(cpu)) == (1, 1)


def test_quicklook_is_the_decimated_image() -> None:
    from dsen2cr.quicklook import Quicklook
    from dsen2cr.visualize import RGB_BANDS

    rng = np.random.default_rng(0)
    before = rng.integers(1, 9000, size=(13, 389, 517)).astype(np.uint16)
    after = rng.integers(1, 9000, size=(13, 389, 517)).astype(np.uint16)
    quicklook = Quicklook(389, 517, max_size=100)
    assert quicklook.scale == 6
    for t in plan_tiles(389, 517, 128, 20):
        rows = slice(t.core.row_off, t.core.row_off + t.core.height)
        cols = slice(t.core.col_off, t.core.col_off + t.core.width)
        quicklook.add(t.core, before[:, rows, cols], after[:, rows, cols])
    np.testing.assert_array_equal(quicklook.before, before[RGB_BANDS, ::6, ::6])
    np.testing.assert_array_equal(quicklook.after, after[RGB_BANDS, ::6, ::6])


def test_auto_tile_is_the_largest_that_fits_the_memory_budget() -> None:
    from dsen2cr.auto import choose_tile, window_bytes

    paper, small = VARIANTS["dsen2cr"].config, VARIANTS["dsen2cr-small"].config
    assert window_bytes(paper, 1, 1) == 4 * (6 * 256 + 30) == 6264
    gib8 = 8 * 2**30
    # enough for (tile / (tile - 68))^2 <= 1.15: 68 / (1 - 1.15^-0.5) = 1007.7 -> 1024; fits: isqrt(2^33 / 6264) = 1171
    assert choose_tile(paper, batch_size=1, memory_bytes=gib8, overlap=68) == 1024
    assert (1024 / (1024 - 68)) ** 2 <= 1.15 < (960 / (960 - 68)) ** 2
    assert choose_tile(paper, batch_size=4, memory_bytes=gib8, overlap=68) == 576  # fits: isqrt(2^31 / 6264) = 585
    assert choose_tile(small, batch_size=1, memory_bytes=gib8, overlap=20) == 320  # 20 / (1 - 1.15^-0.5) = 296.4
    assert choose_tile(paper, batch_size=1, memory_bytes=2**20, overlap=68) == 192  # floor: overlap + 64, rounded up


def test_auto_tile_sizes_windows_for_at_least_the_exact_overlap() -> None:
    """An overlap below the exact one (approximate, for less work) gets the windows the exact one would: it made
    tiny ones (--overlap 0: 64 px, 120 windows of the bundled scene with the small model, 10x the run's time);
    an overlap above it still grows them (40 / (1 - 1.15^-0.5) = 592.6 -> 640)."""
    from dsen2cr.auto import choose_tile

    paper, small = VARIANTS["dsen2cr"].config, VARIANTS["dsen2cr-small"].config
    gib8 = 8 * 2**30
    assert choose_tile(paper, batch_size=1, memory_bytes=gib8, overlap=0) == 1024
    assert choose_tile(small, batch_size=1, memory_bytes=gib8, overlap=4) == 320
    assert choose_tile(small, batch_size=1, memory_bytes=gib8, overlap=40) == 640


def test_remove_clouds_defaults_pick_tile_and_batch(
    scene: dict, tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    common = ["--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif")]
    common += ["--s1", str(scene["folder"] / "s1.tif"), "--no-progress"]
    # 0.05 GiB / 888 bytes per pixel (small model) -> isqrt(60463) = 245 -> 192 px windows, batch 1 on CPU
    result = run_cli("remove-clouds", *common, "--out", str(tmp_path / "a.tif"), "--memory", "0.05")
    assert result.returncode == 0, result.stderr
    assert "tiles: at most 192 px, batch 1 (--tile auto for a 0.05 GiB budget)" in result.stdout
    assert f"{len(plan_tiles(389, 517, 192, 20))} tiles)" in result.stdout
    result = run_cli("remove-clouds", *common, "--out", str(tmp_path / "b.tif"))  # budget of this machine
    assert result.returncode == 0, result.stderr
    assert "tiles: at most 320 px, batch 1" in result.stdout
    assert f"{len(plan_tiles(389, 517, 320, 20))} tiles)" in result.stdout
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())  # seamless: tiling does not change the result


def test_tiles_without_valid_pixels_are_not_run(scene: dict, tmp_path: Path) -> None:
    """Outside the swath nothing is computed; the output is still the whole-image result on valid pixels."""
    s2 = scene["s2"].copy()
    s2[:, :, :300] = 0  # the western 300 columns are nodata in every band
    write_geotiff(tmp_path / "s2.tif", s2, crs=UTM, transform=ORIGIN)
    tiles_run = []
    predictor = predictor_from_model(scene["model"])

    def counting(s2_batch: np.ndarray, s1_batch: np.ndarray | None) -> np.ndarray:
        tiles_run.append(s2_batch.shape[0])
        return predictor(s2_batch, s1_batch)

    report = remove_clouds(
        dataclasses.replace(predictor, predict=counting),
        SceneJob(str(tmp_path / "s2.tif"), str(scene["folder"] / "s1.tif"), tmp_path / "out.tif"),
        SceneSettings(tile=128, overlap=20, batch_size=1, progress=False),
    )
    plan = plan_tiles(389, 517, 128, 20)
    reaching_data = [t for t in plan if t.core.col_off + t.core.width > 300]
    assert sum(tiles_run) == len(reaching_data) < len(plan)
    assert report.skipped == len(plan) - len(reaching_data)
    expected = np.clip(np.rint(_whole_image(scene["model"], s2, scene["s1"]) * 2000), 1, 10000)
    with rasterio.open(tmp_path / "out.tif") as dst:
        out = dst.read().astype(np.float64)
    assert (out[:, :, :300] == 0).all()
    assert np.abs(out[:, :, 300:] - expected[:, :, 300:]).max() <= 1


def test_s1_units_are_checked_where_the_data_is(scene: dict, tmp_path: Path) -> None:
    """The unit check samples a lattice of small windows; S1 data that lies between them is still found."""
    grid = S2Source(scene["folder"] / "s2.tif").grid
    s1 = np.full((2, 400, 400), np.nan, np.float32)
    s1[:, 70:105, 70:105] = 10 ** (scene["s1"][:, 70:105, 70:105] / 10)  # linear power, off the 64 px lattice
    write_geotiff(tmp_path / "lin.tif", s1, crs=UTM, transform=ORIGIN)
    with pytest.raises(DSen2CRError, match="look like linear power"):
        S1Source(tmp_path / "lin.tif", grid)
    s1[:] = np.nan
    write_geotiff(tmp_path / "empty.tif", s1, crs=UTM, transform=ORIGIN)
    with pytest.raises(DSen2CRError, match="S1 holds no valid values"):
        S1Source(tmp_path / "empty.tif", grid)


def _gdal_cache_max() -> int:
    """GDAL's block-cache limit in bytes (GDALGetCacheMax64 of the libgdal this process loaded)."""
    import ctypes

    maps = Path("/proc/self/maps")
    libraries = (
        {line.split()[-1] for line in maps.read_text().splitlines() if "libgdal" in line} if maps.exists() else set()
    )
    if not libraries:
        pytest.skip("libgdal not found in /proc/self/maps (not Linux, or GDAL linked statically)")
    getter = ctypes.CDLL(sorted(libraries)[0]).GDALGetCacheMax64
    getter.restype = ctypes.c_int64
    return int(getter())


def test_scene_runs_with_a_real_gdal_block_cache(
    scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_of: Callable[[int | None], None]
) -> None:
    """The reads (reader thread) and the COG copy run with a block cache of at least 64 MiB. Before: the bound
    was given to rasterio as ``GDAL_CACHEMAX=128``, which it takes as 128 bytes, so every window read
    decompressed its halo blocks again and the COG copy re-read the scene for each overview (2.7x slower)."""
    import rasterio.shutil

    import dsen2cr.outputs.geotiff
    import dsen2cr.scene.batches

    seen: dict[str, int] = {}
    read_batch, copy = dsen2cr.scene.batches._read_batch, rasterio.shutil.copy

    def recording_read(*args: object, **kwargs: object) -> object:
        seen["read"] = _gdal_cache_max()
        return read_batch(*args, **kwargs)

    def recording_copy(*args: object, **kwargs: object) -> object:
        if not str(args[1]).startswith("/vsimem/"):  # not the compression probe
            seen["copy"] = _gdal_cache_max()
        return copy(*args, **kwargs)

    monkeypatch.setattr(dsen2cr.scene.batches, "_read_batch", recording_read)
    monkeypatch.setattr(dsen2cr.outputs.geotiff.rasterio.shutil, "copy", recording_copy)
    predictor = predictor_from_model(scene["model"], device="cpu")
    folder = scene["folder"]
    job = SceneJob(str(folder / "s2.tif"), str(folder / "s1.tif"), tmp_path / "o.tif")
    remove_clouds(predictor, job, SceneSettings(tile=128))
    assert set(seen) == {"read", "copy"}
    assert min(seen.values()) >= 64 * 2**20, seen

    from types import SimpleNamespace

    from dsen2cr.auto import resolve_block_cache_bytes

    assert set(seen.values()) == {256 * 2**20}  # a CPU run's
    # on a GPU: 1 GiB (a full tile's JPEG 2000 block rows, read again by the mask), at most an eighth of the
    # memory, at least 256 MiB
    machine_of(16)  # no container limit: the memory is what psutil says
    for memory, expected in ((24 * 2**30, 2**30), (4 * 2**30, 512 * 2**20), (2**30, 256 * 2**20)):
        monkeypatch.setattr("psutil.virtual_memory", lambda memory=memory: SimpleNamespace(total=memory))
        assert resolve_block_cache_bytes(torch.device("cuda")) == expected
        assert resolve_block_cache_bytes(torch.device("cpu")) == 256 * 2**20


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


@pytest.fixture(params=[True, False], ids=["background", "foreground"])
def completion(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Scenes' outputs completed while the next scene runs (as on a GPU) or at once (as on a CPU)."""
    import dsen2cr.scene.jobs as jobs

    monkeypatch.setattr(jobs, "completes_in_background", lambda device: request.param)
    return bool(request.param)


def test_several_scenes_overlap_completion_with_the_next(scene: dict, tmp_path: Path, completion: bool) -> None:
    """In a run of several scenes each scene's COG is made while the next one is predicted (on a GPU; at once
    on a CPU): the outputs equal those of one scene at a time, each report comes once its files are in place,
    in order, and the COG copies run on a thread of their own."""
    import threading

    import rasterio.shutil

    from dsen2cr.scene.jobs import run_scene_jobs

    s2, s1 = str(scene["folder"] / "s2.tif"), str(scene["folder"] / "s1.tif")
    single = tmp_path / "single.tif"
    remove_clouds(
        predictor_from_model(scene["model"]), SceneJob(s2, s1, single), SceneSettings(tile=128, progress=False)
    )
    jobs = [SceneJob(s2, s1, tmp_path / f"{n}.tif", preview=tmp_path / f"{n}.png") for n in "abc"]
    copy_threads: list[str] = []
    real_copy = rasterio.shutil.copy

    def recording_copy(*args: object, **kwargs: object) -> object:
        # the COG copies (not the compression probe of dsen2cr.outputs.geotiff.cog_options, nor the VRT that
        # names the overviews)
        if not str(args[1]).startswith("/vsimem/") and kwargs.get("driver") == "COG":
            copy_threads.append(threading.current_thread().name)
        return real_copy(*args, **kwargs)

    settings = SceneSettings(weights=str(scene["weights"]), device="cpu", backend="eager", tile=128, progress=False)
    reported = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rasterio.shutil, "copy", recording_copy)
        for report in run_scene_jobs(jobs, settings):
            assert report.out.is_file() and report.out.with_suffix(".png").is_file()  # complete when reported
            reported.append(report.out.name)
            assert report.seconds > 0
    assert reported == ["a.tif", "b.tif", "c.tif"]
    assert len(copy_threads) == 3
    assert all(name.startswith("dsen2cr-finish") == completion for name in copy_threads), copy_threads
    for name in "abc":
        np.testing.assert_array_equal(_pixels(tmp_path / f"{name}.tif"), _pixels(single))
    assert not list(tmp_path.glob(".*"))  # no temporary or staging file left


def test_a_failed_scene_stops_the_run_after_completing_the_one_before(
    scene: dict, tmp_path: Path, completion: bool
) -> None:
    """Scene 2 has no valid pixels: scene 1 is completed and reported, then the error is raised; scene 2 and
    the scene after it leave nothing behind."""
    from dsen2cr.scene.jobs import run_scene_jobs

    empty = tmp_path / "empty.tif"
    write_geotiff(empty, np.zeros((13, 200, 150), np.uint16), crs=UTM, transform=ORIGIN, nodata=0)
    s1_empty = tmp_path / "s1_empty.tif"
    write_geotiff(s1_empty, np.full((2, 200, 150), -15, np.float32), crs=UTM, transform=ORIGIN)
    s2, s1 = str(scene["folder"] / "s2.tif"), str(scene["folder"] / "s1.tif")
    jobs = [
        SceneJob(s2, s1, tmp_path / "a.tif"),
        SceneJob(str(empty), str(s1_empty), tmp_path / "b.tif"),
        SceneJob(s2, s1, tmp_path / "c.tif"),
    ]
    settings = SceneSettings(weights=str(scene["weights"]), device="cpu", backend="eager", tile=128, progress=False)
    reports = run_scene_jobs(jobs, settings)
    assert next(reports).out.name == "a.tif"
    with pytest.raises(DSen2CRError, match="no valid pixels"):
        next(reports)
    assert {p.name for p in tmp_path.iterdir()} == {"a.tif", "empty.tif", "s1_empty.tif"}


def test_a_failed_cog_copy_removes_the_next_scenes_outputs(
    scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, completion: bool
) -> None:
    """The first scene's COG copy fails (disk full, say) while the second scene runs: the error is raised,
    and neither scene leaves a file, temporary or final."""
    import rasterio.shutil

    from dsen2cr.scene.jobs import run_scene_jobs

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", full_disk)
    s2, s1 = str(scene["folder"] / "s2.tif"), str(scene["folder"] / "s1.tif")
    jobs = [SceneJob(s2, s1, tmp_path / f"{n}.tif", mask_out=tmp_path / f"{n}_mask.tif") for n in "ab"]
    settings = SceneSettings(weights=str(scene["weights"]), device="cpu", backend="eager", tile=128, progress=False)
    with pytest.raises(OSError, match="No space left"):
        list(run_scene_jobs(jobs, settings))
    assert list(tmp_path.iterdir()) == []


def test_a_reader_thread_a_signal_orphaned_never_reads_after_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal (SIGTERM, Ctrl-C) that arrives while the executor starts its reader thread leaves the thread
    running its first read but unknown to the executor, whose shutdown then does not wait for it: the caller
    closed the scene while it read, and the process crashed (SIGSEGV, about 1 run in 10 of the SIGTERM test).
    The loop now waits for a read still running and stops later ones, so nothing reads once it has ended."""
    import threading

    import dsen2cr.scene.batches as batches

    events: list[str] = []

    def slow_read(*args: object) -> None:
        events.append("read starts")
        time.sleep(0.3)
        events.append("read ends")

    real_start = threading.Thread.start

    def start_then_interrupted(self: threading.Thread) -> None:
        real_start(self)  # the thread runs ...
        raise KeyboardInterrupt  # ... but the signal's exception leaves Thread.start before the executor sees it

    monkeypatch.setattr(batches, "_read_batch", slow_read)
    tiles = plan_tiles(100, 100, 64, 0)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(threading.Thread, "start", start_then_interrupted)
        next(batches.iter_predictions(None, None, None, tiles, batch_size=1, s1_fill_db=lambda: (0, 0)))  # type: ignore[arg-type]
    events.append("sources closed")  # what remove_clouds does next
    time.sleep(0.5)  # time for a stray read to run
    assert events in (["sources closed"], ["read starts", "read ends", "sources closed"]), events


def test_commas_in_s2_names_are_part_of_the_name(scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Only --s1 splits VV,VH pairs: an S2 file named ``a,b.tif`` is one file, on the command line and in a
    manifest (quoted, after a UTF-8 BOM)."""
    import shutil

    from dsen2cr.cli import main

    named = tmp_path / "a,b.tif"
    shutil.copy(scene["folder"] / "s2.tif", named)
    s1 = str(scene["folder"] / "s1.tif")
    common = ["remove-clouds", "--weights", str(scene["weights"]), "--no-progress", "--tile", "128"]
    assert main([*common, "--s2", str(named), "--s1", s1, "--out", str(tmp_path / "one.tif")]) == 0
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'\ufeffs2,s1,out\n"a,b.tif",{s1},two.tif\n', encoding="utf-8")
    assert main([*common, "--manifest", str(manifest)]) == 0, capsys.readouterr().err
    with rasterio.open(tmp_path / "one.tif") as one, rasterio.open(tmp_path / "two.tif") as two:
        np.testing.assert_array_equal(one.read(), two.read())


def test_out_with_a_trailing_slash_writes_into_the_folder(scene: dict, tmp_path: Path) -> None:
    """``--out folder/`` (and a manifest's ``out`` of ``sub/``) is the scene's ``<name>_cloudfree.tif`` in that
    folder, never a file named like the folder; a folder that does not exist is refused."""
    from dsen2cr.cli import main

    (tmp_path / "dir").mkdir()
    (tmp_path / "sub").mkdir()
    s2, s1 = str(scene["folder"] / "s2.tif"), str(scene["folder"] / "s1.tif")
    common = ["remove-clouds", "--weights", str(scene["weights"]), "--no-progress", "--tile", "128"]
    assert main([*common, "--s2", s2, "--s1", s1, "--out", f"{tmp_path / 'dir'}/"]) == 0
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["s2_cloudfree.tif"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"s2,s1,out\n{s2},{s1},sub/\n")
    assert main([*common, "--manifest", str(manifest)]) == 0
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["s2_cloudfree.tif"]
    assert main([*common, "--s2", s2, "--s1", s1, "--out", f"{tmp_path / 'none'}/"]) == 2


def test_other_outputs_given_as_folders(workdir: Path) -> None:
    """``--mask-out``, ``--preview``, ``--uncertainty-out`` and ``--stac-item`` given as folders (``masks/``) write
    ``<image>_mask.tif``, ``<image>_preview.png``, ``<image>_sigma.tif`` and ``<image>.json`` there, named after
    each scene's image: so several scenes get them without a manifest, and a manifest's column may be a folder."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    first, second = workdir / "T32TPT_20230610T101559.tif", workdir / "T32TPT_20230620T101559.tif"
    first.write_bytes(s2.read_bytes())
    second.write_bytes(s2.read_bytes())
    for name in ("out", "masks", "previews", "items", "rows"):
        (workdir / name).mkdir()
    weights = workdir.weights("dsen2cr-small-nosar")
    common = ["remove-clouds", "--weights", str(weights), "--no-progress"]
    outputs = [f"--mask-out={workdir / 'masks'}/", f"--preview={workdir / 'previews'}/"]
    outputs.append(f"--stac-item={workdir / 'items'}/")
    assert main([*common, "--s2", str(first), str(second), "--out", f"{workdir / 'out'}/", *outputs]) == 0
    stems = ["T32TPT_20230610T101559_cloudfree", "T32TPT_20230620T101559_cloudfree"]
    assert sorted(p.name for p in (workdir / "out").iterdir()) == [f"{stem}.tif" for stem in stems]
    assert sorted(p.name for p in (workdir / "masks").iterdir()) == [f"{stem}_mask.tif" for stem in stems]
    assert sorted(p.name for p in (workdir / "previews").iterdir()) == [f"{stem}_preview.png" for stem in stems]
    assert sorted(p.name for p in (workdir / "items").iterdir()) == [f"{stem}.json" for stem in stems]
    item = json.loads((workdir / "items" / f"{stems[1]}.json").read_text())
    assert item["assets"]["cloud_mask"]["href"] == f"../masks/{stems[1]}_mask.tif"
    # one scene with a named image, and a manifest's column
    assert main([*common, "--s2", str(first), "--out", str(workdir / "one.tif"), f"--mask-out={workdir}/rows/"]) == 0
    manifest = workdir / "m.csv"
    manifest.write_text(f"s2,out,preview\n{second.name},two.tif,rows/\n")
    assert main([*common, "--manifest", str(manifest)]) == 0
    assert sorted(p.name for p in (workdir / "rows").iterdir()) == ["one_mask.tif", "two_preview.png"]


def test_the_mask_declares_nodata_and_never_labels_no_data(tmp_path: Path) -> None:
    """No-data S2 pixels (0 in every band, and NaN in float input) are the map's nodata (255, declared), not
    shadow or cloud; the valid pixels keep their classes."""
    from dsen2cr.cli import main

    rng = np.random.default_rng(0)
    s2 = rng.integers(300, 3000, (13, 96, 128)).astype(np.float32)
    s2[:, :30, :] = 0  # nodata rows
    s2[:, 40:50, :20] = np.nan  # NaN block
    write_geotiff(tmp_path / "s2.tif", s2, crs=UTM, transform=ORIGIN)
    torch.manual_seed(0)
    weights = save_weights(create_model("dsen2cr-small-nosar"), tmp_path / "w.safetensors")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(tmp_path / "s2.tif"), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o.tif"), "--mask-out", str(tmp_path / "m.tif")]) == 0
    with rasterio.open(tmp_path / "m.tif") as dataset:
        mask, nodata = dataset.read(1), dataset.nodata
    assert nodata == 255
    assert (mask[:30] == 255).all() and (mask[40:50, :20] == 255).all()
    assert set(np.unique(mask[60:])) <= {0, 1, 2}


def test_remove_clouds_array_equals_the_file_run(workdir: Path) -> None:
    """The in-memory entry (#29) gives the pixels, map and sigma of the command on the same scene as files, on
    the scene's grid or a placeholder one; wrong shapes are one line naming the argument."""
    import dsen2cr
    from dsen2cr.cli import main
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.predictor import load_predictor

    torch.manual_seed(0)
    weights = save_weights(ModelConfig(2, 8, True, 0.1, "diag").build(), workdir / "d.safetensors")
    s2, s1 = workdir.scene()
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--no-progress"]
    files = ["--out", str(workdir / "o.tif"), "--mask-out", str(workdir / "m.tif"), "--uncertainty-out"]
    assert main([*argv, *files, str(workdir / "s.tif"), "--keep-clear"]) == 0
    with rasterio.open(s2) as a, rasterio.open(s1) as b:
        s2_dn, s1_db, crs, transform = a.read(), b.read(), a.crs, a.transform
    predictor = load_predictor(weights)
    settings = dsen2cr.SceneSettings(keep_clear=True)
    for grid in ({"crs": crs, "transform": transform}, {}):
        result = dsen2cr.remove_clouds_array(predictor, s2_dn, s1_db, settings=settings, uncertainty=True, **grid)
        for name, got in (("o.tif", result.image), ("m.tif", result.mask[None]), ("s.tif", result.sigma)):
            with rasterio.open(workdir / name) as expected:
                np.testing.assert_array_equal(got, expected.read(), err_msg=name)
        assert result.tags["DSEN2CR_KEEP_CLEAR"].startswith("yes")
    with pytest.raises(DSen2CRError, match=r"s1_db: expected shape \(2, 40, 50\), got \(2, 40, 49\)"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, s1_db[:, :, 1:])
    with pytest.raises(DSen2CRError, match="s2_dn: 3 bands; expected 13"):
        dsen2cr.remove_clouds_array(predictor, s2_dn[:3], s1_db)


def test_remove_clouds_array_errors_name_the_arguments(workdir: Path) -> None:
    """Errors about the arrays' values name the argument, not the temporary GeoTIFF the arrays were written to
    (it was '/tmp/dsen2cr-arrays-…/s2.tif: S2 values look like reflectance'); a bands-last array is told how to
    turn it; S1 whose VH lies above VV is refused (the array names no polarisation: VV, VH by the contract)."""
    import dsen2cr
    from dsen2cr.errors import DSen2CRError

    s2, _ = workdir.scene()
    with rasterio.open(s2) as source:
        s2_dn = source.read()
    vv = np.random.default_rng(9).normal(-12, 2, s2_dn.shape[1:])
    predictor = dsen2cr.load_predictor(workdir.weights("dsen2cr-small"), device="cpu")
    nosar = dsen2cr.load_predictor(workdir.weights("dsen2cr-small-nosar"), device="cpu")
    with pytest.raises(DSen2CRError, match=r"^s2_dn: S2 values look like reflectance"):
        dsen2cr.remove_clouds_array(nosar, s2_dn / 10000.0)
    with pytest.raises(DSen2CRError, match=r"^s1_db: S1 band 2 is brighter than band 1"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, np.stack([vv - 6, vv]).astype(np.float32))
    with pytest.raises(DSen2CRError, match=r"bands last.*np\.moveaxis\(s2_dn, -1, 0\)"):
        dsen2cr.remove_clouds_array(nosar, np.moveaxis(s2_dn, 0, -1))
    # a model with SAR and no s1_db, and uncertainty=True for weights without the variance: they told the
    # command line's options and named a file in the removed temporary folder ('/tmp/dsen2cr-arrays-…/sigma.tif:
    # --uncertainty-out needs weights …'; 's2_dn: … pass --s1 (an s1 in the job in Python)')
    with pytest.raises(DSen2CRError, match=r"^s1_db: these weights need SAR input: VV, VH in dB on the grid of s2_dn"):
        dsen2cr.remove_clouds_array(predictor, s2_dn)
    with pytest.raises(DSen2CRError, match=r"^uncertainty=True needs weights that predict their uncertainty") as error:
        dsen2cr.remove_clouds_array(nosar, s2_dn, uncertainty=True)
    assert "dsen2cr-arrays-" not in str(error.value) and "--uncertainty-out" not in str(error.value)
    from dsen2cr.models.dsen2cr import DSen2CR
    from dsen2cr.weights import save_weights

    with_sigma = save_weights(
        DSen2CR(num_blocks=2, num_features=8, include_sar=False, uncertainty="diag"), workdir / "sigma.safetensors"
    )
    compiled = dsen2cr.SceneSettings(backend="compiled")
    with pytest.raises(DSen2CRError, match=r"^uncertainty=True runs the model eagerly in fp32") as error:
        dsen2cr.remove_clouds_array(
            dsen2cr.load_predictor(with_sigma, device="cpu"), s2_dn, uncertainty=True, settings=compiled
        )
    assert "dsen2cr-arrays-" not in str(error.value)


def test_remove_clouds_array_puts_named_bands_in_order(workdir: Path) -> None:
    """``band_names`` for another order, as the docstring promises: bands in any order, named in any of the
    usual spellings (B2, B02, b8a), run as the same bands in the usual order, L1C and L2A (it was refused, 'band
    descriptions say B12 B11 …; expected the order B01 …'). Names that are no S2 band were ignored, and the
    bands run in the order given; they, a band named twice and a band missing are refused, naming band_names."""
    import dsen2cr
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.preprocessing import S2_BANDS

    s2, _ = workdir.scene()
    with rasterio.open(s2) as source:
        s2_dn = source.read()
    nosar = dsen2cr.load_predictor(workdir.weights("dsen2cr-small-nosar"), device="cpu")
    order = np.random.default_rng(3).permutation(13)
    spelt = [
        S2_BANDS[i].lower() if k % 3 == 0 else S2_BANDS[i][0] + S2_BANDS[i][1:].zfill(2) for k, i in enumerate(order)
    ]
    got = dsen2cr.remove_clouds_array(nosar, s2_dn[order], band_names=spelt)
    np.testing.assert_array_equal(got.image, dsen2cr.remove_clouds_array(nosar, s2_dn).image)
    l2a = [i for i in order if S2_BANDS[i] != "B10"]
    got = dsen2cr.remove_clouds_array(nosar, s2_dn[l2a], band_names=[S2_BANDS[i] for i in l2a])
    usual = [i for i in range(13) if S2_BANDS[i] != "B10"]
    np.testing.assert_array_equal(got.image, dsen2cr.remove_clouds_array(nosar, s2_dn[usual]).image)
    for names, message in (
        (["X", *S2_BANDS[1:]], r"^band_names: 'X' is not a Sentinel-2 band"),
        (["B2", *S2_BANDS[1:]], r"^band_names: B2 named twice"),
        ([*S2_BANDS[:8], "B9", "B9", "B10", "B11", "B12"], r"^band_names: B9 named twice"),
    ):
        with pytest.raises(DSen2CRError, match=message):
            dsen2cr.remove_clouds_array(nosar, s2_dn, band_names=names)
    with pytest.raises(DSen2CRError, match=r"^band_names: B8A, B11 missing; expected the 13 bands of L1C"):
        dsen2cr.remove_clouds_array(nosar, s2_dn[:11], band_names=[b for b in S2_BANDS if b not in ("B8A", "B11")])


def test_remove_clouds_array_speaks_of_its_arguments_and_reads_masked_arrays(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the in-memory entry says and records names its arguments, not the temporary copies it ran on: a
    warning about the values read '/tmp/dsen2cr-arrays-…/s2.tif: B10 (cirrus) lies at …' and the result's tags
    gave ``DSEN2CR_S2`` 's2.tif'. A numpy masked array (as ``rasterio.read(masked=True)`` gives it) had its
    mask dropped, the hidden values run as data; its masked pixels are now no data (S2: in any band; S1: filled
    with the scene's mean, as NaN is). S1 that is not an array is one line, not an internal error."""
    import logging

    import dsen2cr
    from dsen2cr.errors import DSen2CRError

    s2, s1 = workdir.scene()
    with rasterio.open(s2) as a, rasterio.open(s1) as b:
        s2_dn, s1_db = a.read(), b.read()
    predictor = dsen2cr.load_predictor(workdir.weights("dsen2cr-small"), device="cpu")
    offset = s2_dn.copy()
    offset[10] = 1500  # B10 of a baseline 04.00 product, offset kept: the run warns
    with caplog.at_level(logging.WARNING):
        result = dsen2cr.remove_clouds_array(predictor, offset, s1_db)
    assert "s2_dn: B10 (cirrus) lies at 1500 DN" in caplog.text, caplog.text
    assert "dsen2cr-arrays-" not in caplog.text, caplog.text
    assert (result.tags["DSEN2CR_S2"], result.tags["DSEN2CR_S1"]) == ("s2_dn", "s1_db")

    hidden = np.zeros(s2_dn.shape, bool)
    hidden[3, :10] = True  # one band masked: the pixel is no data
    s1_nan = s1_db.astype(np.float32)
    s1_nan[:, 20:30] = np.nan
    s1_hidden = np.ma.masked_array(s1_db.astype(np.float32), np.isnan(s1_nan))
    masked = dsen2cr.remove_clouds_array(predictor, np.ma.masked_array(s2_dn, hidden), s1_hidden)
    zeroed = s2_dn.copy()
    zeroed[:, :10] = 0
    expected = dsen2cr.remove_clouds_array(predictor, zeroed, s1_nan)
    assert (masked.image[:, :10] == 0).all() and (masked.mask[:10] == 255).all()
    np.testing.assert_array_equal(masked.image, expected.image)
    assert masked.tags["DSEN2CR_S1_FILLED"] == expected.tags["DSEN2CR_S1_FILLED"] != "none"
    with pytest.raises(DSen2CRError, match=r"^s1_db: expected a \(2, height, width\) array, got <class 'list'>"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, s1_db.tolist())


def test_remove_clouds_array_runs_in_the_temporary_folder_it_is_given(workdir: Path) -> None:
    """The in-memory entry writes its GeoTIFF copies and outputs in a temporary folder: the system's ($TMPDIR,
    often a RAM-backed /tmp of a few GB, where a full tile takes some 10 GB) unless ``temporary_folder`` names
    another. One without room for the staged outputs is refused before any window in a line that names
    ``temporary_folder`` and its folder (it named '/tmp/dsen2cr-arrays-…/out.tif', a folder the caller could
    not choose); the folder is left as it was."""
    import subprocess

    import dsen2cr
    from dsen2cr.scene import arrays

    s2, _ = workdir.scene()
    with rasterio.open(s2) as source:
        s2_dn = source.read()
    predictor = dsen2cr.load_predictor(workdir.weights("dsen2cr-small-nosar"), device="cpu")
    chosen = workdir / "chosen"
    chosen.mkdir()
    seen: list[str] = []
    real = arrays.remove_clouds

    def recording(predictor: object, job: object, settings: object) -> object:
        seen.append(str(job.out))  # type: ignore[attr-defined]
        return real(predictor, job, settings)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arrays, "remove_clouds", recording)
        result = dsen2cr.remove_clouds_array(predictor, s2_dn, temporary_folder=chosen)
    assert seen[0].startswith(f"{chosen}/dsen2cr-arrays-") and list(chosen.iterdir()) == []
    assert result.image.shape == s2_dn.shape
    # a folder that does not exist, or a file: '[Errno 2] No such file or directory: …/dsen2cr-arrays-g4dls4yp'
    with pytest.raises(DSen2CRError, match=rf"^temporary_folder: {workdir}/none: no such folder$"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, temporary_folder=workdir / "none")
    with pytest.raises(DSen2CRError, match=rf"^temporary_folder: {s2}: is a file, not a folder$"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, temporary_folder=s2)

    small = workdir / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1024k", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with pytest.raises(DSen2CRError, match=rf"^temporary_folder {small} has .* free, and this scene's outputs"):
            dsen2cr.remove_clouds_array(predictor, s2_dn, temporary_folder=small)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_settings_that_the_given_predictor_would_ignore_are_refused(workdir: Path) -> None:
    """``remove_clouds(predictor, job, SceneSettings(precision="bf16"))`` ran the predictor as loaded (IEEE fp32
    eager) and recorded fp32: the settings' backend, precision, device and weights were ignored without a word.
    Now a value other than ``auto`` (or the predictor's own) is refused, saying where it is chosen."""
    import dsen2cr
    from dsen2cr.errors import DSen2CRError

    s2, _ = workdir.scene()
    weights = workdir.weights("dsen2cr-small-nosar")
    predictor = dsen2cr.load_predictor(weights, device="cpu", backend="eager", precision="fp32")
    job = dsen2cr.SceneJob(str(s2), None, workdir / "o.tif")
    for settings, message in (
        (dsen2cr.SceneSettings(precision="bf16"), r"^precision bf16: remove_clouds runs the predictor as loaded"),
        (dsen2cr.SceneSettings(backend="compiled"), r"^backend compiled: remove_clouds runs the predictor as loaded"),
        (dsen2cr.SceneSettings(device="cuda"), r"^device cuda: remove_clouds runs the predictor as loaded"),
        (dsen2cr.SceneSettings(weights="other.safetensors"), r"^weights other\.safetensors: remove_clouds runs"),
    ):
        with pytest.raises(DSen2CRError, match=message):
            dsen2cr.remove_clouds(predictor, job, settings)
        with pytest.raises(DSen2CRError, match=message):
            dsen2cr.remove_clouds_array(predictor, np.ones((13, 20, 20), np.uint16), settings=settings)
    assert not (workdir / "o.tif").exists()
    same = dsen2cr.SceneSettings(precision="fp32", backend="eager", device="cpu", progress=False)
    assert dsen2cr.remove_clouds(predictor, job, same).tiles == 1


def test_settings_name_a_gpu_as_the_predictor_does_in_either_spelling() -> None:
    """``cuda`` and ``cuda:0`` name one GPU for a process of its own: a predictor loaded on either passes settings
    that give the other (``load_predictor(device="cuda")`` keeps no index); another GPU is refused."""
    import torch

    from dsen2cr import create_model
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.predictor import Predictor
    from dsen2cr.scene.checks import check_settings_fit
    from dsen2cr.settings import SceneSettings

    config = create_model("dsen2cr-small-nosar").config
    for loaded, asked in (("cuda", "cuda:0"), ("cuda:0", "cuda"), ("cpu", "cpu:0"), ("cuda:1", "cuda:1")):
        check_settings_fit(Predictor(lambda s2, s1: s2, config, torch.device(loaded)), SceneSettings(device=asked))
    with pytest.raises(DSen2CRError, match=r"^device cuda:1: remove_clouds runs the predictor as loaded"):
        check_settings_fit(Predictor(lambda s2, s1: s2, config, torch.device("cuda")), SceneSettings(device="cuda:1"))
