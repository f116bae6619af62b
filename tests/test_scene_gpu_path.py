"""The output path a run on a GPU takes (docs/design.md §4.4), run on this CPU: every COG (image, sigma map,
cloud/shadow map) compressed while it is written, windows made into output pixels on several threads (and held
in memory while the mask's statistics pass runs), each scene completed on a thread of its own while the next
one runs. Its outputs must be the CPU path's: the same
pixels at every level, the same tags and band metadata, in GDAL's COG layout."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

import dsen2cr.auto
import dsen2cr.scene.jobs
import dsen2cr.scene.remove
from dsen2cr.data.synth import add_synthetic_clouds, synthetic_clear_scene
from dsen2cr.models.dsen2cr import ModelConfig
from dsen2cr.outputs import cog_stream
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.scene.jobs import run_scene_jobs
from dsen2cr.settings import SceneJob, SceneSettings
from dsen2cr.weights import save_weights
from test_cog_stream import _assert_gdal_cog_layout

UTM = CRS.from_epsg(32632)
OUTPUTS = ("out", "mask_out", "uncertainty_out")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """An odd-sized (389 x 517) cloudy scene with S1, and a small model with a variance head (non-zero biases)."""
    folder = tmp_path_factory.mktemp("gpu-path")
    rng = np.random.default_rng(1)
    clear, s1 = synthetic_clear_scene((389, 517), rng)
    cloudy, _ = add_synthetic_clouds(clear, rng)
    write_geotiff(folder / "s2.tif", cloudy, crs=UTM, transform=from_origin(500000, 5000000, 10, 10))
    write_geotiff(folder / "s1.tif", s1, crs=UTM, transform=from_origin(500000, 5000000, 10, 10))
    torch.manual_seed(0)
    model = ModelConfig(2, 16, True, 0.1, "diag").build().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return folder / "s2.tif", folder / "s1.tif", save_weights(model, folder / "diag.safetensors")


def _run(inputs: tuple[Path, Path, Path], folder: Path) -> list[SceneJob]:
    """Two scenes, each with every output (image, map, sigma, quicklook), with keep-clear."""
    s2, s1, weights = inputs
    folder.mkdir()
    jobs = [
        SceneJob(
            str(s2),
            str(s1),
            folder / f"{name}.tif",
            mask_out=folder / f"{name}-mask.tif",
            preview=folder / f"{name}.png",
            uncertainty_out=folder / f"{name}-sigma.tif",
        )
        for name in "ab"
    ]
    settings = SceneSettings(
        weights=str(weights), device="cpu", backend="eager", tile=128, keep_clear=True, progress=False
    )
    reported = [report.out for report in run_scene_jobs(jobs, settings)]
    assert reported == [job.out for job in jobs]
    assert not list(folder.glob(".*"))  # no temporary, staging or tile data file left
    return jobs


def _levels(path: Path) -> list[np.ndarray]:
    """Every level's pixels, the image first."""
    with rasterio.open(path) as dataset:
        count = len(dataset.overviews(1))
    levels = []
    for level in [None, *range(count)]:
        with rasterio.open(path, overview_level=level) as dataset:
            levels.append(dataset.read())
    return levels


def _described(path: Path) -> tuple:
    """What rasterio says of a file beside its pixels (band statistics apart: :func:`_statistics`)."""
    with rasterio.open(path) as dataset:
        colormap = dataset.colormap(1) if dataset.dtypes[0] == "uint8" else None
        return (
            dataset.profile,
            dataset.tags(),
            dataset.tags(ns="IMAGE_STRUCTURE"),
            [_statistics(dataset.tags(band))[0] for band in dataset.indexes],
            dataset.descriptions,
            dataset.scales,
            dataset.offsets,
            dataset.colorinterp,
            dataset.overviews(1),
            colormap,
        )


def _statistics(tags: dict[str, str]) -> tuple[dict[str, str], dict[str, float]]:
    """A band's tags but its ``STATISTICS_*``, and those as numbers."""
    numbers = {key: float(value) for key, value in tags.items() if key.startswith("STATISTICS_")}
    return {key: value for key, value in tags.items() if key not in numbers}, numbers


def _band_statistics(path: Path) -> list[dict[str, float]]:
    with rasterio.open(path) as dataset:
        return [_statistics(dataset.tags(band))[1] for band in dataset.indexes]


def test_the_gpu_output_path_writes_what_the_cpu_path_writes(
    inputs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scenes with every output and keep-clear, through the CPU's path and then the GPU's (forced here):
    the COGs are streamed on the completing thread, and equal the CPU's at every level, tags and all."""
    cpu_jobs = _run(inputs, tmp_path / "cpu")

    streamed: list[str] = []
    real_write = cog_stream.COGStream.write

    def recording_write(self: cog_stream.COGStream, path: Path, staging: Path) -> None:
        streamed.append(threading.current_thread().name)
        real_write(self, path, staging)

    monkeypatch.setattr(cog_stream.COGStream, "write", recording_write)
    monkeypatch.setattr(dsen2cr.scene.remove, "completes_in_background", lambda device: True)
    monkeypatch.setattr(dsen2cr.scene.jobs, "completes_in_background", lambda device: True)
    monkeypatch.setattr(dsen2cr.auto, "resolve_finish_threads", lambda device: 3)
    monkeypatch.setattr(dsen2cr.auto, "resolve_hold_bytes", lambda device: 2**30)  # held during the statistics
    gpu_jobs = _run(inputs, tmp_path / "gpu")

    # every COG of both scenes was streamed, on the thread that completes a scene while the next one runs
    assert len(streamed) == 6 and all(name.startswith("dsen2cr-finish") for name in streamed), streamed
    for cpu, gpu in zip(cpu_jobs, gpu_jobs, strict=True):
        for output in OUTPUTS:
            ours, reference = getattr(gpu, output), getattr(cpu, output)
            _assert_gdal_cog_layout(ours)
            for got, expected in zip(_levels(ours), _levels(reference), strict=True):
                np.testing.assert_array_equal(got, expected, err_msg=f"{ours.name}")
            assert _described(ours) == _described(reference), ours.name
            for got_stats, expected_stats in zip(_band_statistics(ours), _band_statistics(reference), strict=True):
                assert got_stats == pytest.approx(expected_stats, rel=1e-12)  # GDAL prints 14 digits; sum order
        np.testing.assert_array_equal(np.asarray(Image.open(gpu.preview)), np.asarray(Image.open(cpu.preview)))
    with rasterio.open(gpu_jobs[0].uncertainty_out) as sigma:  # something was predicted, and kept apart
        assert np.nanmax(sigma.read()) > 0


def test_fp16_as_a_gpu_computes_it_through_a_scene(
    inputs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--precision fp16`` with the fused fp16 network a GPU builds (forced here: a CPU builds autocast): the
    COG records fp16 and the first batch's distance to IEEE fp32, and stays close to the fp32 run's COG."""
    from dsen2cr import backends
    from dsen2cr.models import family_of
    from dsen2cr.precision import HALF_DTYPES

    s2, s1, weights = inputs
    fused_runs = []
    real_build = backends.build_backend

    def build_as_on_a_gpu(model: torch.nn.Module, name: str, device: str | torch.device = "cpu") -> object:
        if name not in HALF_DTYPES:
            return real_build(model, name, device)
        fused = family_of(model.config).fused_half(model, name)
        fused_runs.append(type(fused).__name__)
        return backends._fused_half(fused, torch.device(device))

    outputs = {}
    for precision in ("fp32", "fp16"):
        with monkeypatch.context() as patch:
            patch.setattr(backends, "build_backend", build_as_on_a_gpu)
            job = SceneJob(str(s2), str(s1), tmp_path / f"{precision}.tif", mask_out=tmp_path / f"{precision}-m.tif")
            settings = SceneSettings(weights=str(weights), device="cpu", tile=128, precision=precision, progress=False)
            list(run_scene_jobs([job], settings))
        with rasterio.open(job.out) as cog:
            outputs[precision] = cog.read().astype(np.float64), cog.tags()
    assert fused_runs == ["FusedHalf"]
    (fp32, fp32_tags), (fp16, fp16_tags) = outputs["fp32"], outputs["fp16"]
    assert (fp16_tags["DSEN2CR_PRECISION"], fp16_tags["DSEN2CR_BACKEND"]) == ("fp16", "fp16")
    # the form a GPU builds, its convolutions computed here as its tensor cores would (cuDNN's on a GPU)
    assert fp16_tags["DSEN2CR_ARITHMETIC"] == "fp16 convolutions emulated in fp32, fp16 residual stream"
    assert fp32_tags["DSEN2CR_PRECISION"] == "fp32"
    p99, largest = float(fp16_tags["DSEN2CR_CHECK_P99_DN"]), float(fp16_tags["DSEN2CR_CHECK_MAX_DN"])
    assert 0 < p99 <= largest <= backends.TOLERANCE_DN["fp16"]
    difference = np.abs(fp16 - fp32)
    assert 0 < difference.mean() < 2 and np.percentile(difference, 99) <= 8, (difference.mean(), difference.max())
    assert difference.max() <= 40


def _overflowing_fp16(monkeypatch: pytest.MonkeyPatch, on_call: int) -> list[int]:
    """Make the fp16 backend the fused network a GPU builds, whose ``on_call``-th batch overflows (infinities);
    returns the list its calls are counted in."""
    from dsen2cr import backends
    from dsen2cr.models import family_of

    calls: list[int] = []
    real_build = backends.build_backend

    def build(model: torch.nn.Module, name: str, device: str | torch.device = "cpu") -> object:
        if name != "fp16":
            return real_build(model, name, device)
        fused = backends._fused_half(family_of(model.config).fused_half(model, name), torch.device(device))

        def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
            calls.append(len(calls))
            prediction = fused(s2, s1)
            return np.full_like(prediction, np.inf) if len(calls) == on_call else prediction

        return predict

    monkeypatch.setattr(backends, "build_backend", build)
    return calls


@pytest.mark.parametrize(("gpu_path", "scene", "journal"), [(False, 1, "off"), (True, 2, "off"), (True, 2, "on")])
def test_fp16_that_auto_chose_and_that_overflows_later_reruns_the_scene_in_float32(
    inputs: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    gpu_path: bool,
    scene: int,
    journal: str,
) -> None:
    """fp16 chosen by ``auto`` (as on a GPU) passes the first batch's check and overflows on a later batch of the
    first or the second scene (the first then completing on its own thread, as on a GPU): that scene is run again
    from the start in the float32 arithmetic auto falls back to (IEEE fp32 on this CPU, TF32 on a GPU), with a
    warning; its outputs and the later scenes' are those of a run in that precision and say so, the scenes before
    stay fp16. The run stopped with an error before, after most of the work. With a journal, the fp16 windows it
    kept go with the overflow (the scene's run again records its own), and none is left once the scenes are done."""
    s2, s1, weights = inputs
    settings = dict(weights=str(weights), device="cpu", tile=128, progress=False)
    reference = tmp_path / "fp32.tif"
    (report,) = run_scene_jobs([SceneJob(str(s2), str(s1), reference)], SceneSettings(**settings, precision="fp32"))
    overflow_on = (scene - 1) * report.tiles + 3  # batches of one window on a CPU
    calls = _overflowing_fp16(monkeypatch, on_call=overflow_on)
    real_resolve = dsen2cr.auto.resolve_precision
    monkeypatch.setattr(
        dsen2cr.auto, "resolve_precision", lambda *a, **k: "fp16" if a[0] == "auto" else real_resolve(*a, **k)
    )
    if gpu_path:
        monkeypatch.setattr(dsen2cr.scene.remove, "completes_in_background", lambda device: True)
        monkeypatch.setattr(dsen2cr.scene.jobs, "completes_in_background", lambda device: True)
        monkeypatch.setattr(dsen2cr.auto, "resolve_finish_threads", lambda device: 3)
        monkeypatch.setattr(dsen2cr.auto, "resolve_hold_bytes", lambda device: 2**30)
    jobs = [SceneJob(str(s2), str(s1), tmp_path / f"auto{i}.tif", mask_out=tmp_path / f"m{i}.tif") for i in (1, 2)]
    with caplog.at_level("WARNING"):
        reports = list(run_scene_jobs(jobs, SceneSettings(**settings, journal=journal)))
    assert len(reports) == 2 and len(calls) == overflow_on  # fp16 ran until it overflowed, then never again
    assert any("fp16 overflowed" in r.message and "again" in r.message for r in caplog.records), caplog.text
    with rasterio.open(reference) as fp32:
        expected = fp32.read()
    for number, job in enumerate(jobs, start=1):
        with rasterio.open(job.out) as cog:
            pixels, tags = cog.read(), cog.tags()
        # the scene run again says why on itself (DSEN2CR_WARNINGS), the others do not
        assert ("fp16 overflowed on a batch after the first" in tags.get("DSEN2CR_WARNINGS", "")) == (number == scene)
        if number < scene:
            assert tags["DSEN2CR_PRECISION"] == "fp16"
            assert 0 < np.abs(pixels.astype(float) - expected).max() <= 40
            continue
        np.testing.assert_array_equal(pixels, expected)
        check = (tags["DSEN2CR_PRECISION"], tags["DSEN2CR_BACKEND"], tags["DSEN2CR_CHECK_MAX_DN"])
        assert check == ("fp32", "eager", "0.00")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto1.tif", "auto2.tif", "fp32.tif", "m1.tif", "m2.tif"]


def test_a_named_fp16_that_overflows_later_stops_and_writes_nothing(
    inputs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--precision fp16`` named by the user is kept to: an overflow on a later batch stops the run with a
    one-line error that says what to use instead; nothing is written."""
    from dsen2cr.errors import DSen2CRError

    s2, s1, weights = inputs
    _overflowing_fp16(monkeypatch, on_call=3)
    job = SceneJob(str(s2), str(s1), tmp_path / "out" / "o.tif")
    job.out.parent.mkdir()
    settings = SceneSettings(weights=str(weights), device="cpu", tile=128, progress=False, precision="fp16")
    with pytest.raises(DSen2CRError, match="fp16 holds values up to 65504: use --precision tf32 or fp32"):
        list(run_scene_jobs([job], settings))
    assert list(job.out.parent.iterdir()) == []
