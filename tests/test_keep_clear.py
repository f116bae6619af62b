"""``remove-clouds --mask`` and ``--keep-clear``: scene masks independent of the tiling, clear pixels kept bit for
bit, cloud predicted, a monotone blend in between, product masks (SCL, MSK_CLASSI), and their bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

from dsen2cr.cli import main
from dsen2cr.cloud_detection import CLEAR, cloud_shadow_mask, shadow_mask
from dsen2cr.data.synth import add_synthetic_clouds, synthetic_clear_scene
from dsen2cr.outputs.geotiff import write_geotiff

UTM = CRS.from_epsg(32632)
ORIGIN = from_origin(500000, 5000000, 10, 10)
FEATHER = 4


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, weights_file: Callable[[str], Path]) -> dict:
    """A 300 x 420 cloudy scene, larger than one 128 px window, and a small model without SAR."""
    folder = tmp_path_factory.mktemp("keep")
    rng = np.random.default_rng(5)
    clear, _ = synthetic_clear_scene((300, 420), rng)
    cloudy, _ = add_synthetic_clouds(clear, rng)
    write_geotiff(folder / "s2.tif", cloudy, crs=UTM, transform=ORIGIN)
    torch.manual_seed(0)
    weights = weights_file("dsen2cr-small-nosar")
    return {"folder": folder, "s2": cloudy, "weights": weights}


def _run(scene: dict, out: Path, *extra: str) -> np.ndarray:
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif")]
    assert main([*argv, "--out", str(out), "--no-progress", "--device", "cpu", *extra]) == 0
    with rasterio.open(out) as dataset:
        return dataset.read()


def _scene_mask(s2: np.ndarray) -> np.ndarray:
    """The paper mask of the whole scene, its shadow statistics over all (valid) pixels, computed here."""
    r = s2.astype(np.float64) / 10000
    csi, blue = (r[7] + r[11]) / 2, r[1]
    t3 = csi.min() + 0.75 * (csi.mean() - csi.min())
    t4 = blue.min() + 5 / 6 * (blue.mean() - blue.min())
    dark = ((csi < t3) & (blue < t4)).astype(int)
    shadow = ndimage.convolve(dark, np.ones((5, 5), int), mode="constant") > 12
    mask = np.where(shadow, -1, 0)
    mask[cloud_shadow_mask(s2) == 1] = 1  # the cloud score has no image statistics: the whole-array result
    return mask


def test_mask_out_does_not_depend_on_the_tiling(scene: dict, tmp_path: Path) -> None:
    _run(scene, tmp_path / "a.tif", "--tile", "64", "--mask-out", str(tmp_path / "m64.tif"))
    _run(scene, tmp_path / "b.tif", "--tile", "512", "--mask-out", str(tmp_path / "m512.tif"))
    with rasterio.open(tmp_path / "m64.tif") as small, rasterio.open(tmp_path / "m512.tif") as whole:
        tiled, single = small.read(1), whole.read(1)
    np.testing.assert_array_equal(tiled, single)
    codes = {0: 0, 1: 1, -1: 2}  # the written map: 0 clear, 1 cloud, 2 shadow
    np.testing.assert_array_equal(tiled, np.vectorize(codes.get)(_scene_mask(scene["s2"])))
    assert (tiled == 1).any() and (tiled == 0).any()


def test_keep_clear_is_exact_seamless_and_monotone(scene: dict, tmp_path: Path) -> None:
    s2 = scene["s2"]
    plain = _run(scene, tmp_path / "plain.tif", "--tile", "128")
    kept = _run(scene, tmp_path / "kept.tif", "--tile", "128", "--keep-clear", "--feather", str(FEATHER))
    whole = _run(scene, tmp_path / "whole.tif", "--tile", "512", "--keep-clear", "--feather", str(FEATHER))
    np.testing.assert_array_equal(kept, whole)  # tiled equals whole-image
    cloudy = _scene_mask(s2) != 0
    to_cloud = ndimage.distance_transform_edt(~cloudy)
    to_clear = ndimage.distance_transform_edt(cloudy)
    far_clear = ~cloudy & (to_cloud > FEATHER)
    deep_cloud = cloudy & (to_clear > FEATHER)
    assert far_clear.sum() > 1000 and deep_cloud.sum() > 1000
    np.testing.assert_array_equal(kept[:, far_clear], s2[:, far_clear])  # bit for bit
    np.testing.assert_array_equal(kept[:, deep_cloud], plain[:, deep_cloud])
    low, high = np.minimum(s2, plain), np.maximum(s2, plain)
    assert ((kept >= low) & (kept <= high)).all()  # every value between input and prediction
    # monotone: along the signed distance, the share of the prediction never decreases towards the cloud
    signed = np.where(cloudy, -to_clear, to_cloud)
    band = 3
    moving = plain[band] != s2[band]
    share = (kept[band][moving].astype(float) - s2[band][moving]) / (
        plain[band][moving].astype(float) - s2[band][moving]
    )
    order = np.argsort(signed[moving], kind="stable")
    expected = np.clip((FEATHER - signed[moving]) / (2 * FEATHER), 0, 1)
    assert (
        np.abs(share - expected).max() < 0.5 / np.abs(plain[band][moving].astype(float) - s2[band][moving]).min() + 1e-9
    )
    assert np.all(np.diff(expected[order]) <= 1e-12)


def test_preview_outlines_the_mask(scene: dict, tmp_path: Path) -> None:
    from PIL import Image

    from dsen2cr.visualize import mask_outline

    _run(scene, tmp_path / "o.tif", "--preview", str(tmp_path / "p.png"))
    image = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    height, width = scene["s2"].shape[1:]
    # the caption (scene, model, mask), titles, input | output, the outline legend
    assert image.shape == (16 + 16 + height + 18, 2 * width + 4, 3)
    left = image[32 : 32 + height, :width]
    mask = _scene_mask(scene["s2"])
    cloud, shadow = mask_outline(mask == 1), mask_outline(mask == -1)
    # clouds outlined in yellow, shadows in cyan (a cloud's edge wins where they meet): #29, one colour for both
    np.testing.assert_array_equal((left == (255, 220, 0)).all(axis=-1), cloud)
    np.testing.assert_array_equal((left == (0, 220, 255)).all(axis=-1), shadow & ~cloud)
    assert cloud.sum() > 100 and (shadow & ~cloud).sum() > 10
    _run(scene, tmp_path / "k.tif", "--preview", str(tmp_path / "k.png"), "--keep-clear")
    titles = [
        np.asarray(Image.open(path).convert("L"))[16:32, width + 4 :]
        for path in (tmp_path / "p.png", tmp_path / "k.png")
    ]
    assert not np.array_equal(*titles)  # the output's title says whether --keep-clear was used


def _l2a_with_scl(folder: Path, scl: np.ndarray, make_safe: Callable, write_jp2: Callable) -> Path:
    """A tiny Level-2A SAFE (the ``make_safe`` fixture) with its SCL at 20 m."""
    safe = make_safe(folder, level="L2A", baseline="02.14")
    target = next(safe.rglob("*_B05_20m.jp2")).with_name("T33UUU_20230610T101559_SCL_20m.jp2")
    write_jp2(target, scl.astype(np.uint16)[None], 20)
    return safe


def test_scl_and_msk_classi_mapping(tmp_path: Path) -> None:
    from dsen2cr.scene.masking import product_mask

    classes = np.arange(12).reshape(1, 3, 4)
    mapped = product_mask(classes, "SCL")
    assert mapped.tolist() == [[0, 0, 0, -1], [0, 0, 0, 0], [1, 1, 1, 0]]
    msk = np.zeros((3, 2, 2), np.uint8)
    msk[0, 0, 0] = 1  # opaque
    msk[1, 0, 1] = 1  # cirrus
    msk[2, 1, 0] = 1  # snow: not cloud
    assert product_mask(msk, "MSK_CLASSI").tolist() == [[1, 1], [0, 0]]


def test_product_mask_end_to_end(
    tmp_path: Path, make_safe: Callable, write_jp2: Callable, weights_file: Callable[[str], Path]
) -> None:
    """--mask product on an L2A SAFE writes the SCL's classes (nearest onto 10 m) as the map."""
    scl = np.full((30, 30), 4, np.uint16)  # vegetation
    scl[:10, :10] = 9  # cloud (high probability)
    scl[20:, 20:] = 3  # cloud shadow
    safe = _l2a_with_scl(tmp_path / "p", scl, make_safe, write_jp2)
    torch.manual_seed(0)
    weights = weights_file("dsen2cr-small-nosar")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(safe), "--out", str(tmp_path / "o.tif")]
    assert (
        main([*argv, "--mask", "product", "--mask-out", str(tmp_path / "m.tif"), "--keep-clear", "--no-progress"]) == 0
    )
    with rasterio.open(tmp_path / "m.tif") as dataset:
        mask = dataset.read(1)
    expected = np.zeros((60, 60), np.uint8)
    expected[:20, :20] = 1
    expected[40:, 40:] = 2  # shadow
    np.testing.assert_array_equal(mask, expected)


def test_the_scl_band_of_an_export_is_its_product_mask(tmp_path: Path, weights_file: Callable[[str], Path]) -> None:
    """An Earth Engine export of COPERNICUS/S2_SR_HARMONIZED holding its SCL band beside the reflectance bands (read by
    their band descriptions): --mask product takes the SCL band as the product's mask (it was refused: no product
    mask), its classes written as the map."""
    from rasterio.transform import from_origin

    from dsen2cr.outputs.geotiff import write_geotiff
    from dsen2cr.preprocessing import S2_BANDS

    rng = np.random.default_rng(3)
    names = [*(b for b in S2_BANDS if b != "B10"), "AOT", "SCL"]
    stack = rng.integers(300, 4000, (len(names), 40, 50)).astype(np.uint16)
    scl = np.full((40, 50), 4, np.uint16)  # vegetation
    scl[:10, :20] = 9  # cloud (high probability)
    scl[30:, 30:] = 3  # cloud shadow
    stack[-1] = scl
    export = write_geotiff(
        tmp_path / "export.tif",
        stack,
        crs="EPSG:32633",
        transform=from_origin(400000, 5800000, 10, 10),
        band_names=names,
    )
    torch.manual_seed(0)
    argv = ["remove-clouds", "--weights", str(weights_file("dsen2cr-small-nosar")), "--s2", str(export)]
    argv += ["--out", str(tmp_path / "o.tif"), "--mask", "product", "--mask-out", str(tmp_path / "m.tif")]
    assert main([*argv, "--keep-clear", "--no-progress"]) == 0
    with rasterio.open(tmp_path / "m.tif") as dataset:
        mask = dataset.read(1)
    expected = np.zeros((40, 50), np.uint8)
    expected[:10, :20] = 1
    expected[30:, 30:] = 2  # shadow
    np.testing.assert_array_equal(mask, expected)


def test_earth_engine_qa_bands_mapping() -> None:
    """Earth Engine's cloud bands as the product mask reads them (QA60, then MSK_CLASSI_OPAQUE and _CIRRUS where the
    export has them): QA60's bit 10 (opaque) or 11 (cirrus), or an MSK_CLASSI band's 1, is cloud; nothing is shadow."""
    from dsen2cr.scene.masking import product_mask

    qa60 = np.array([[0, 1024, 2048, 3072, 0, 0]], np.uint16)
    opaque = np.array([[0, 0, 0, 0, 1, 0]], np.uint16)
    cirrus = np.array([[0, 0, 0, 1, 0, 1]], np.uint16)
    assert product_mask(np.stack([qa60, opaque, cirrus]), "EE").tolist() == [[0, 1, 1, 1, 1, 1]]
    assert product_mask(qa60[None], "EE").tolist() == [[0, 1, 1, 1, 0, 0]]  # an export of QA60 alone
    assert product_mask(np.stack([opaque, cirrus]), "EE").tolist() == [[0, 0, 0, 1, 1, 1]]  # of MSK_CLASSI alone


#: An Earth Engine whole-image export of COPERNICUS/S2_HARMONIZED: 13 bands, then its QA and MSK_CLASSI bands.
EE_L1C_BANDS = ("QA10", "QA20", "QA60", "MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS", "MSK_CLASSI_SNOW_ICE")


def _ee_l1c_export(path: Path, qa: dict[str, np.ndarray], names: tuple[str, ...] = EE_L1C_BANDS) -> Path:
    """A 40 x 50 export of S2_HARMONIZED holding the QA bands ``names`` (zero where ``qa`` gives none)."""
    from dsen2cr.preprocessing import S2_BANDS

    rng = np.random.default_rng(4)
    stack = rng.integers(300, 4000, (len(S2_BANDS) + len(names), 40, 50)).astype(np.uint16)
    for index, name in enumerate(names, start=len(S2_BANDS)):
        stack[index] = qa.get(name, np.zeros((40, 50), np.uint16))
    transform = from_origin(400000, 5800000, 10, 10)
    return write_geotiff(path, stack, crs="EPSG:32633", transform=transform, band_names=[*S2_BANDS, *names])


@pytest.mark.parametrize(
    "names",
    [EE_L1C_BANDS, ("QA60",), ("MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS")],
    ids=["whole export", "QA60 alone", "MSK_CLASSI alone"],
)
def test_the_qa_bands_of_an_earth_engine_l1c_export_are_its_product_mask(
    tmp_path: Path, weights_file: Callable[[str], Path], names: tuple[str, ...], capsys: pytest.CaptureFixture
) -> None:
    """An Earth Engine export of COPERNICUS/S2_HARMONIZED (Level-1C: no SCL) with its QA60 band (until February
    2022) or its MSK_CLASSI bands (from February 2024), or both: --mask product takes them as the product's mask (it
    was refused: no product mask); QA10 and QA20 (always empty) and the snow band are not cloud. The run says the
    map's shares of the valid pixels (computed here by hand)."""
    qa = {name: np.zeros((40, 50), np.uint16) for name in EE_L1C_BANDS}
    qa["QA60"][:10, :20] = 1024  # opaque
    qa["QA60"][10:14, :20] = 2048  # cirrus
    qa["MSK_CLASSI_OPAQUE"][:10, :20] = 1  # what February 2024 on says of the same clouds
    qa["MSK_CLASSI_CIRRUS"][10:14, :20] = 1
    qa["MSK_CLASSI_SNOW_ICE"][30:, :] = 1  # snow: not cloud
    qa["QA10"][20:, 40:] = 7  # never read
    export = _ee_l1c_export(tmp_path / "export.tif", qa, names)
    torch.manual_seed(0)
    argv = ["remove-clouds", "--weights", str(weights_file("dsen2cr-small-nosar")), "--s2", str(export)]
    argv += ["--out", str(tmp_path / "o.tif"), "--mask", "product", "--mask-out", str(tmp_path / "m.tif")]
    assert main([*argv, "--keep-clear", "--no-progress"]) == 0
    with rasterio.open(tmp_path / "m.tif") as dataset:
        mask, tags = dataset.read(1), dataset.tags()
    expected = np.zeros((40, 50), np.uint8)
    expected[:14, :20] = 1
    np.testing.assert_array_equal(mask, expected)
    assert "cloud 14.0%, shadow 0.0% of the valid pixels (mask product)" in capsys.readouterr().out  # 280 of 2000
    assert (tags["DSEN2CR_CLOUD_PERCENT"], tags["DSEN2CR_SHADOW_PERCENT"]) == ("14.00", "0.00")


def test_empty_earth_engine_qa_bands_are_warned_of(
    tmp_path: Path, weights_file: Callable[[str], Path], capsys: pytest.CaptureFixture
) -> None:
    """Earth Engine masks out QA60 from February 2022 to February 2024 and MSK_CLASSI before February 2024: an
    export of such a scene holds zeros there, a map of no cloud anywhere, and --keep-clear would keep every cloud.
    The run ends (it cannot know that the scene has clouds) but warns, naming why and what to use instead."""
    export = _ee_l1c_export(tmp_path / "export.tif", {})
    torch.manual_seed(0)
    argv = ["remove-clouds", "--weights", str(weights_file("dsen2cr-small-nosar")), "--s2", str(export)]
    assert main([*argv, "--out", str(tmp_path / "o.tif"), "--mask", "product", "--keep-clear", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "cloud 0.0%, shadow 0.0%" in captured.out
    warning = [line for line in captured.err.splitlines() if "flags no cloud" in line]
    assert len(warning) == 1, captured.err
    for said in ("export.tif", "Earth Engine", "February 2022", "February 2024", "--mask paper"):
        assert said in warning[0], warning[0]
    # the image records the warnings its run said (read later, without the console), its inputs by name only
    with rasterio.open(tmp_path / "o.tif") as dataset:
        recorded = dataset.tags()["DSEN2CR_WARNINGS"].split("\n")
    console = [line.removeprefix("warning: ") for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(console) == 2 and "B10 (cirrus) lies at" in console[0]  # the random DN look offset: said first
    assert recorded == [line.replace(str(export), export.name) for line in console]
    assert str(tmp_path) not in "".join(recorded)


def test_a_batch_says_which_of_its_scenes_warned(scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A batch's result lines scroll by: after them, which of its scenes warned while they ran (the export's DN look
    offset; the synthetic scene says nothing), their images' DSEN2CR_WARNINGS saying what. One scene says no more
    than its line."""
    export = _ee_l1c_export(tmp_path / "export.tif", {})
    (tmp_path / "out").mkdir()
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--s2", str(scene["folder"] / "s2.tif"), str(export), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 of the 2 scenes written warned while they ran: export_cloudfree.tif (their DSEN2CR_WARNINGS)"
    assert main([*argv, "--s2", str(export), "--out", str(tmp_path / "one.tif")]) == 0
    assert "scenes written warned" not in capsys.readouterr().out


def test_the_run_says_and_records_the_maps_shares(scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With a map (--mask-out, --keep-clear, --preview) the result line gives its cloud and shadow shares of the valid
    pixels, and the image and the map record them: the paper mask's, counted here from the map made by hand."""
    _run(scene, tmp_path / "o.tif", "--keep-clear", "--mask-out", str(tmp_path / "m.tif"), "--tile", "128")
    mask = _scene_mask(scene["s2"])
    cloud, shadow = 100 * np.mean(mask == 1), 100 * np.mean(mask == -1)
    assert cloud > 1 and shadow > 0.1
    assert f"cloud {cloud:.1f}%, shadow {shadow:.1f}% of the valid pixels (mask paper)" in capsys.readouterr().out
    for path in (tmp_path / "o.tif", tmp_path / "m.tif"):
        with rasterio.open(path) as dataset:
            tags = dataset.tags()
        assert (tags["DSEN2CR_CLOUD_PERCENT"], tags["DSEN2CR_SHADOW_PERCENT"]) == (f"{cloud:.2f}", f"{shadow:.2f}")
    _run(scene, tmp_path / "plain.tif")
    with rasterio.open(tmp_path / "plain.tif") as dataset:
        assert "DSEN2CR_CLOUD_PERCENT" not in dataset.tags()  # no map made: nothing said of one
        assert "DSEN2CR_WARNINGS" not in dataset.tags()  # nothing warned of
    assert "cloud " not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "product"], "--mask product needs the product's own mask"),
        (["--keep-clear", "--feather", "-1"], "--feather: must be 0 or more pixels"),
    ],
    ids=["product mask of a GeoTIFF", "negative feather"],
)
def test_bad_mask_options(
    scene: dict, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif")]
    assert main([*argv, "--out", str(tmp_path / "o.tif"), "--no-progress", *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.tif").exists()


def test_keep_clear_refuses_an_input_the_output_cannot_hold(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    floats = write_geotiff(tmp_path / "f.tif", scene["s2"].astype(np.float32) + 0.5, crs=UTM, transform=ORIGIN)
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--s2", str(floats), "--out", str(tmp_path / "o.tif")]
    assert main([*argv, "--keep-clear", "--no-progress"]) == 2
    assert "S2 is float32 and the output is uint16" in capsys.readouterr().err


def test_shadow_statistics_of_a_scene(scene: dict) -> None:
    """The streamed scene statistics equal those of the whole array (so the map equals the whole-image map)."""
    from dsen2cr.cloud_detection import ShadowStatsAccumulator

    s2 = scene["s2"]
    accumulator = ShadowStatsAccumulator()
    for rows in (slice(0, 100), slice(100, 300)):
        block = s2[:, rows]
        accumulator.add(block, np.ones(block.shape[1:], bool))
    stats = accumulator.stats()
    assert stats is not None
    np.testing.assert_array_equal(shadow_mask(s2, stats), shadow_mask(s2))


def test_parallel_finishing_writes_what_one_thread_writes(
    scene: dict, tmp_path: Path, machine_of: Callable[[int | None], None]
) -> None:
    """On a GPU, windows become output pixels (keep-clear's map, distances, blend) on several threads beside
    the network (#27 item 4): the image and the map are those of one thread bit for bit, and the map is the
    whole scene's, computed here. The rule: one thread on a CPU; all cores but two, at most 8, on a GPU."""
    import dataclasses

    from dsen2cr.auto import plan_scene_run, resolve_finish_threads
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    predictor = load_predictor(scene["weights"], device="cpu")
    settings = SceneSettings(tile=128, keep_clear=True, feather=FEATHER, progress=False)
    plan = plan_scene_run(settings, predictor.config, device=predictor.device)
    assert plan.finish_threads == 1
    written = {}
    for threads in (1, 4):
        out, mask_out = tmp_path / f"o{threads}.tif", tmp_path / f"m{threads}.tif"
        job = SceneJob(str(scene["folder"] / "s2.tif"), None, out, mask_out=mask_out)
        remove_clouds(predictor, job, dataclasses.replace(plan, finish_threads=threads))
        written[threads] = [rasterio.open(path).read() for path in (out, mask_out)]
    for one, several in zip(written[1], written[4], strict=True):
        np.testing.assert_array_equal(one, several)
    codes = np.select([_scene_mask(scene["s2"]) == 1, _scene_mask(scene["s2"]) == -1], [1, 2], 0)
    np.testing.assert_array_equal(written[4][1][0], codes)

    for cores, expected in ((16, 8), (64, 8), (4, 2), (2, 1), (None, 1)):
        machine_of(cores)
        assert resolve_finish_threads(torch.device("cuda")) == expected, cores
        assert resolve_finish_threads(torch.device("cpu")) == 1


def test_windows_held_for_the_statistics_pass_share_the_machines_memory(
    monkeypatch: pytest.MonkeyPatch, machine_of: Callable[[int | None], None]
) -> None:
    """What a run may hold while the statistics pass runs: on a GPU 4 GiB, at most an eighth of the memory
    shared among the run's processes on the machine (torchrun's ``LOCAL_WORLD_SIZE``: one per GPU); on a CPU
    nothing."""
    from types import SimpleNamespace

    from dsen2cr.auto import resolve_hold_bytes

    machine_of(16)  # no container limit: the memory is what psutil says
    gib = 2**30
    for memory, ranks, expected in ((128, None, 4), (16, None, 2), (128, "1", 4), (128, "8", 2), (24, "4", 0.75)):
        monkeypatch.setattr("psutil.virtual_memory", lambda memory=memory: SimpleNamespace(total=memory * gib))
        if ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert resolve_hold_bytes(torch.device("cuda")) == expected * gib, (memory, ranks)
        assert resolve_hold_bytes(torch.device("cpu")) == 0


@pytest.mark.parametrize(("threads", "hold_bytes"), [(1, 0), (4, 0), (4, 2**30)])
@pytest.mark.parametrize("where", ["statistics", "window"])
def test_an_error_in_the_masks_work_stops_the_run_and_leaves_nothing(
    scene: dict, tmp_path: Path, threads: int, hold_bytes: int, where: str
) -> None:
    """An error in the statistics pass (its own thread, raised at the first window) or in a window's map (on
    a prepare thread) ends the run with that error, also while windows wait in memory for the statistics
    (a GPU run's ``hold_bytes``); no output, staging or overview file is left."""
    import dataclasses

    from dsen2cr.auto import plan_scene_run
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene import masking
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    predictor = load_predictor(scene["weights"], device="cpu")
    settings = SceneSettings(tile=128, keep_clear=True, feather=FEATHER, progress=False)
    plan = dataclasses.replace(
        plan_scene_run(settings, predictor.config, device=predictor.device),
        finish_threads=threads,
        hold_bytes=hold_bytes,
    )
    calls = []
    real_window = masking.SceneMasker.window

    def failing_window(self: masking.SceneMasker, window: Window, read: object = None) -> np.ndarray:
        calls.append(window)
        if len(calls) == 3:
            raise DSen2CRError("s2.tif: a read failed (window)")
        return real_window(self, window, read)  # type: ignore[arg-type]

    def failing_stats(*args: object, **kwargs: object) -> None:
        raise DSen2CRError("s2.tif: a read failed (statistics)")

    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    job = SceneJob(str(scene["folder"] / "s2.tif"), None, out, mask_out=out.with_name("m.tif"))
    with pytest.MonkeyPatch.context() as patch:
        if where == "window":
            patch.setattr(masking.SceneMasker, "window", failing_window)
        else:
            patch.setattr(masking, "_scene_shadow_stats", failing_stats)
        with pytest.raises(DSen2CRError, match=f"a read failed \\({where}\\)"):
            remove_clouds(predictor, job, plan)
    assert list(out.parent.iterdir()) == []


#: Bytes a 64 px window of the small model keeps alive while it waits: its 13 bands' DN and its prediction.
WINDOW_64_BYTES = 64 * 64 * 13 * (2 + 4)


@pytest.mark.parametrize("held", [0, 10, "all"])
def test_the_network_runs_on_while_the_statistics_pass_runs(scene: dict, tmp_path: Path, held: int | str) -> None:
    """The first map waits for the scene's shadow statistics (their pass reads the whole scene). While the pass
    runs, predicted windows that find the writer's queue full wait in memory, up to ``ScenePlan.hold_bytes``
    (a GPU run's), instead of stopping the network: with room for all, every window is predicted before the
    pass ends; with room for ten, ten more than without; with none (a CPU run's, whose network is far slower
    than the pass) the network stops after a few windows as before. Either way the outputs are those of a run
    whose statistics were ready at once, bit for bit."""
    import dataclasses
    import threading
    import time

    from dsen2cr.auto import plan_scene_run
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene import masking, remove
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    predictor = load_predictor(scene["weights"], device="cpu")
    settings = SceneSettings(tile=64, keep_clear=True, feather=FEATHER, progress=False)
    plan = plan_scene_run(settings, predictor.config, device=predictor.device)
    assert plan.hold_bytes == 0  # a CPU run holds nothing
    s2 = str(scene["folder"] / "s2.tif")
    reference = SceneJob(s2, None, tmp_path / "ref.tif", mask_out=tmp_path / "ref-mask.tif")
    remove_clouds(predictor, reference, plan)

    gate, predicted = threading.Event(), []
    real_stats, real_predictions = masking._scene_shadow_stats, remove.iter_predictions

    def gated_stats(*args: object, **kwargs: object) -> object:
        assert gate.wait(120)
        return real_stats(*args, **kwargs)  # type: ignore[arg-type]

    def counted_predictions(*args: object, **kwargs: object) -> object:
        for result in real_predictions(*args, **kwargs):  # type: ignore[arg-type]
            predicted.append(result[0])
            yield result

    job = SceneJob(s2, None, tmp_path / "out.tif", mask_out=tmp_path / "mask.tif")
    errors: list[BaseException] = []

    hold_bytes = 2**30 if held == "all" else int(held) * WINDOW_64_BYTES

    def run() -> None:
        try:
            remove_clouds(predictor, job, dataclasses.replace(plan, hold_bytes=hold_bytes))
        except BaseException as error:  # handed to the test
            errors.append(error)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masking, "_scene_shadow_stats", gated_stats)
        patch.setattr(remove, "iter_predictions", counted_predictions)
        thread = threading.Thread(target=run)
        thread.start()
        tiles = 7 * 10  # 300 x 420 px in cores of 64 - 20 px
        deadline, seen, since = time.monotonic() + 60, -1, time.monotonic()
        while len(predicted) < tiles and time.monotonic() < deadline and time.monotonic() - since < 2:
            if len(predicted) != seen:  # until the network stops (2 s without a window) or is done
                seen, since = len(predicted), time.monotonic()
            time.sleep(0.05)
        seen = len(predicted)
        gate.set()
        thread.join(120)
    assert not errors
    stopped_at = 2 * plan.batch_size + 2  # the writer's queue, the window in the writer, the one submitted
    if held == "all":
        assert seen == tiles
    else:
        assert 1 <= seen - int(held) <= stopped_at + 1  # + 1: a scene edge's smaller window
    for out, ref in ((job.out, reference.out), (job.mask_out, reference.mask_out)):
        with rasterio.open(out) as dataset, rasterio.open(ref) as expected:
            np.testing.assert_array_equal(dataset.read(), expected.read())


def test_scene_masker_windows_on_several_threads_at_once(scene: dict) -> None:
    """The masker serves windows to several threads at once (each reads through handles of its own) and
    gathers the scene's shadow statistics on a thread of its own: the maps equal those made one by one, and
    the statistics those of the whole array; closing it at once, mid-pass, stops the pass."""
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.windows import Window

    from dsen2cr.cloud_detection import ShadowStatsAccumulator
    from dsen2cr.inputs import resolve_s2
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.scene.masking import SceneMasker

    s2 = scene["s2"]
    masker = SceneMasker(S2Source(resolve_s2(str(scene["folder"] / "s2.tif"))))
    windows = [Window(c, r, 70, 60) for r in range(0, 300, 60) for c in range(0, 420, 70)]
    one_by_one = [masker.window(w) for w in windows]
    with ThreadPoolExecutor(max_workers=4) as pool:
        at_once = list(pool.map(masker.window, windows))
    for a, b in zip(one_by_one, at_once, strict=True):
        np.testing.assert_array_equal(a, b)
    whole = _scene_mask(s2)
    for window, got in zip(windows, at_once, strict=True):
        np.testing.assert_array_equal(got, whole[window.toslices()])
    accumulator = ShadowStatsAccumulator()
    accumulator.add(s2, np.ones(s2.shape[1:], bool))
    assert masker.stats == accumulator.stats()
    assert len(masker._sources.opened) >= 2  # the main thread's and the pool's handles
    masker.close()

    stopped = SceneMasker(S2Source(resolve_s2(str(scene["folder"] / "s2.tif"))))
    stopped.close()  # before or during its pass: returns, the pass has ended
    assert stopped._stats is not None and stopped._stats.done()


S2CLOUDLESS_BANDS = ["B1", "B2", "B4", "B5", "B8", "B8A", "B9", "B10", "B11", "B12"]


def test_s2cloudless_wiring_matches_its_own_api(scene: dict) -> None:
    """Our s2cloudless map equals the package's own mask of the ten bands it expects, as reflectance, with the
    settings chosen for 10 m."""
    s2cloudless = pytest.importorskip("s2cloudless", reason="the optional 'masks' extra is not installed")
    from dsen2cr.cloud_detection import s2cloudless_mask
    from dsen2cr.preprocessing import S2_BANDS

    s2 = scene["s2"][:, :96, :128]
    ten = np.stack([s2[S2_BANDS.index(b)] for b in S2CLOUDLESS_BANDS], axis=-1).astype(np.float32) / 10000
    detector = s2cloudless.S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=False)
    expected = detector.get_cloud_masks(ten[None])[0]
    got = s2cloudless_mask(s2)
    np.testing.assert_array_equal(got, expected.astype(np.int8))
    assert set(np.unique(got)) <= {0, 1}  # clouds only: no shadow class


def test_s2cloudless_scene_mask_does_not_depend_on_the_tiling(scene: dict, tmp_path: Path) -> None:
    pytest.importorskip("s2cloudless", reason="the optional 'masks' extra is not installed")
    from dsen2cr.cloud_detection import s2cloudless_mask

    for tile in ("64", "512"):
        _run(
            scene,
            tmp_path / f"o{tile}.tif",
            "--tile",
            tile,
            "--mask",
            "s2cloudless",
            "--mask-out",
            str(tmp_path / f"m{tile}.tif"),
        )
    with rasterio.open(tmp_path / "m64.tif") as a, rasterio.open(tmp_path / "m512.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        np.testing.assert_array_equal(a.read(1), s2cloudless_mask(scene["s2"]))
        assert "shadow" not in a.descriptions[0] and a.tags(1)["CATEGORIES"] == "0 clear, 1 cloud, 255 no data"


def test_s2cloudless_on_level_2a_is_warned_of(scene: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """s2cloudless was trained on Level-1C top-of-atmosphere data with its cirrus band B10; Level-2A has no B10
    (the run fills it with a clear-sky constant), so its map sees no cirrus there: warned of, naming the scene.
    It ran without a word (the Level-2A warning spoke of the weights only). Level-1C input has no such line."""
    pytest.importorskip("s2cloudless", reason="the optional 'masks' extra is not installed")
    import logging

    from dsen2cr.preprocessing import S2_BANDS

    l2a = tmp_path / "l2a.tif"
    write_geotiff(l2a, np.delete(scene["s2"], S2_BANDS.index("B10"), axis=0), crs=UTM, transform=ORIGIN)
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--mask", "s2cloudless", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="dsen2cr"):
        assert main([*argv, "--s2", str(l2a), "--out", str(tmp_path / "o.tif")]) == 0
    assert f"{l2a}: --mask s2cloudless was trained on Level-1C data with its cirrus band B10" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsen2cr"):
        assert main([*argv, "--s2", str(scene["folder"] / "s2.tif"), "--out", str(tmp_path / "o1c.tif")]) == 0
    assert "s2cloudless was trained" not in caplog.text


def test_evaluate_and_training_take_the_s2cloudless_mask(
    tmp_path: Path, synthetic_tree: Path, weights_file: Callable[[str], Path]
) -> None:
    """evaluate --mask s2cloudless scores the regions of that mask (its cloud fraction, identity's clear MAE 0);
    loss.mask takes it for training; product masks are refused for patches."""
    pytest.importorskip("s2cloudless", reason="the optional 'masks' extra is not installed")
    import csv

    from dsen2cr.cloud_detection import s2cloudless_mask
    from dsen2cr.config import load_config
    from dsen2cr.data.layout import read_file_list, select_split
    from dsen2cr.errors import DSen2CRError

    torch.manual_seed(0)
    weights = weights_file("dsen2cr-small")
    argv = [
        "evaluate",
        "--weights",
        str(weights),
        "--data-root",
        str(synthetic_tree),
        "--file-list",
        str(synthetic_tree / "files.csv"),
        "--split",
        "test",
        "--no-images",
    ]
    assert main([*argv, "--out", str(tmp_path / "paper")]) == 0
    assert main([*argv, "--mask", "s2cloudless", "--out", str(tmp_path / "s2c")]) == 0
    rows = {name: list(csv.DictReader((tmp_path / name / "metrics_per_image.csv").open())) for name in ("paper", "s2c")}
    triplets = {
        t.patch_id: t for t in select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "test")
    }
    for row in rows["s2c"]:
        with rasterio.open(triplets[row["patch_id"]].s2_cloudy) as src:
            expected = (s2cloudless_mask(src.read()) != 0).mean()
        assert float(row["cloud_fraction"]) == pytest.approx(expected)
        if row["method"] == "identity" and expected < 1:
            assert float(row["mae_clear"]) == 0
    assert [r["cloud_fraction"] for r in rows["s2c"]] != [r["cloud_fraction"] for r in rows["paper"]]
    assert load_config("small-cpu", ["loss.mask=s2cloudless"]).loss.mask == "s2cloudless"
    with pytest.raises(DSen2CRError, match="product masks come with Sentinel products"):
        load_config("small-cpu", ["loss.mask=product"])


def test_s2cloudless_without_the_extra(
    scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import sys

    import dsen2cr.cloud_detection

    monkeypatch.setattr(dsen2cr.cloud_detection, "_DETECTOR", None)
    monkeypatch.setitem(sys.modules, "s2cloudless", None)  # import fails as if not installed
    argv = ["remove-clouds", "--weights", str(scene["weights"]), "--s2", str(scene["folder"] / "s2.tif")]
    assert main([*argv, "--out", str(tmp_path / "o.tif"), "--mask", "s2cloudless", "--no-progress"]) == 2
    assert "pip install 'dsen2cr[masks]'" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_uncertainty_out_is_the_models_sigma_and_zero_where_the_input_is_kept(scene: dict, tmp_path: Path) -> None:
    """--uncertainty-out (#28): 13 float32 bands of sigma in DN equal to the network's, run here on the whole
    scene in float64 (the tiling is exact); with --keep-clear, sigma times the prediction's weight: 0 on clear
    pixels kept bit for bit, the full sigma deep in clouds, linear at the feathered edge."""
    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.preprocessing import s2_dn_to_model
    from dsen2cr.weights import save_weights

    torch.manual_seed(1)
    model = ModelConfig(2, 8, False, 0.1, "diag").build().eval()
    weights = save_weights(model, tmp_path / "u.safetensors")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(scene["folder"] / "s2.tif"), "--no-progress"]
    argv += ["--tile", "128"]
    assert main([*argv, "--out", str(tmp_path / "a.tif"), "--uncertainty-out", str(tmp_path / "sa.tif")]) == 0
    kept_argv = ["--keep-clear", "--feather", str(FEATHER), "--uncertainty-out", str(tmp_path / "sk.tif")]
    kept_argv += ["--preview", str(tmp_path / "p.png"), "--mask-out", str(tmp_path / "m.tif")]
    kept_argv += ["--compress", "zstd", "--compress-level", "1"]  # for every COG of the run: image, sigma, map
    assert main([*argv, "--out", str(tmp_path / "k.tif"), *kept_argv]) == 0
    for name, compression in (("sa", "DEFLATE"), ("k", "ZSTD"), ("sk", "ZSTD"), ("m", "ZSTD")):
        with rasterio.open(tmp_path / f"{name}.tif") as written:
            assert written.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == compression, name
    with rasterio.open(tmp_path / "sa.tif") as every, rasterio.open(tmp_path / "sk.tif") as kept:
        sigma, sigma_kept = every.read(), kept.read()
        halved = every.read(out_shape=(13, 150, 210))  # the 2x overview: each 2x2 block's mean, made by dsen2cr
        assert (every.count, every.dtypes[0], every.nodata) == (13, "float32", -1.0)
        assert every.descriptions[1] == "sigma B2" and every.tags()["DSEN2CR_PRECISION"] == "fp32"
        assert "keep-clear kept the input" in kept.tags()["DSEN2CR_UNCERTAINTY"]
    double = ModelConfig(2, 8, False, 0.1, "diag").build().double().eval()
    double.load_state_dict(model.state_dict())
    with torch.no_grad():
        _, variance = double.forward_with_variance(torch.from_numpy(s2_dn_to_model(scene["s2"])).double()[None])
    np.testing.assert_allclose(sigma, np.sqrt(variance[0].numpy()) * 2000, rtol=1e-4)
    np.testing.assert_allclose(
        halved, sigma.astype(np.float64).reshape(13, 150, 2, 210, 2).mean(axis=(2, 4)), rtol=1e-6
    )
    cloudy = _scene_mask(scene["s2"]) != 0
    signed = np.where(cloudy, -ndimage.distance_transform_edt(cloudy), ndimage.distance_transform_edt(~cloudy))
    weight = np.clip((FEATHER - signed) / (2 * FEATHER), 0, 1)
    np.testing.assert_allclose(sigma_kept, sigma * weight[None], rtol=1e-5, atol=1e-3)
    assert (sigma_kept[:, weight == 0] == 0).all() and (weight == 0).sum() > 1000
    from PIL import Image

    preview = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert preview.shape == (32 + 300 + 18, 3 * 420 + 2 * 4, 3)  # caption, titles, input, output, sigma, bar
    sigma_panel = preview[32:, 2 * 424 :][:300]
    mean_sigma = sigma_kept.mean(axis=0)
    lowest, highest = sigma_panel[mean_sigma == 0].mean(axis=0), sigma_panel[mean_sigma > mean_sigma.max() * 0.99]
    assert tuple(lowest.round()) == (40, 20, 90) and (highest.mean(axis=0) > 200).sum() == 2  # ramp: blue to yellow


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_a_map_from_the_readers_window_is_the_map_read_on_its_own(workdir: Path, resampling: str) -> None:
    """A core's map made from the window a scene run's reader already read (``ReadWindow``) equals the map the
    masker makes from a read of its own, on a product whose 20 m and 60 m bands are resampled onto the 10 m
    grid, for every core of a tiling whose overlap holds the mask's radius (edges and corners included); the
    masker then opens no handles of its own. Where a read does not hold the core grown by the radius (an
    overlap of 4 px), the masker reads, and its map is the same."""
    from dsen2cr.cloud_detection import MASK_RADIUS
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.scene.masking import ReadWindow, SceneMasker
    from dsen2cr.scene.tiles import plan_tiles

    safe = workdir.safe(baseline="05.10", shift=1000, offsets={i: -1000 for i in range(13)})
    reader = S2Source(str(safe), resampling=resampling)
    own_reads = SceneMasker(reader.reopen())
    from_reads = SceneMasker(reader.reopen())
    try:
        whole = own_reads.window(Window(0, 0, reader.grid.width, reader.grid.height))
        assert (whole == CLEAR).any() and (whole != CLEAR).any()  # a map with something on it
        for overlap, covered in ((2 * MASK_RADIUS + 2, True), (4, False)):
            for tile in plan_tiles(reader.grid.height, reader.grid.width, 24, overlap):
                read = ReadWindow(tile.window, reader.read(tile.window))
                np.testing.assert_array_equal(from_reads.window(tile.core, read), whole[tile.core.toslices()])
            assert (from_reads._sources.opened == []) is covered
    finally:
        for source in (reader, own_reads, from_reads):
            source.close()


def test_keep_clear_takes_the_maps_from_the_readers_windows(scene: dict, tmp_path: Path) -> None:
    """With an overlap that holds the mask's radius and the feathering's, a scene run with ``--keep-clear
    --mask-out`` reads each window once: the masker reads no window of its own (only its statistics pass reads
    the scene), and the outputs equal those of a run whose masker reads every window itself."""
    from dsen2cr.scene import masking

    reads: list[object] = []
    real_window, real_source = masking.SceneMasker.window, masking.ThreadSources.get

    def own_reads_only(self: masking.SceneMasker, window: Window, read: object = None) -> np.ndarray:
        return real_window(self, window)

    def counted_source(self: masking.ThreadSources) -> object:
        reads.append(self)
        return real_source(self)

    options = ["--tile", "128", "--overlap", "40", "--keep-clear", "--feather", str(FEATHER)]
    outputs = {}
    for name in ("own", "reader"):
        with pytest.MonkeyPatch.context() as patch:
            if name == "own":
                patch.setattr(masking.SceneMasker, "window", own_reads_only)
            else:
                patch.setattr(masking.ThreadSources, "get", counted_source)
            image = _run(scene, tmp_path / f"{name}.tif", *options, "--mask-out", str(tmp_path / f"{name}.m.tif"))
        with rasterio.open(tmp_path / f"{name}.m.tif") as mask:
            outputs[name] = (image, mask.read())
    assert reads == []
    for own, reader in zip(outputs["own"], outputs["reader"], strict=True):
        np.testing.assert_array_equal(own, reader)


def test_the_statistics_pass_reads_on_the_runs_reading_threads(workdir: Path) -> None:
    """On a GPU a scene run reads on several threads (``ScenePlan.band_threads``); the mask's statistics pass
    reads the whole scene before the first map can be made, so its blocks are read on as many threads (it read
    them on one, the slowest reader of a run)."""
    import dataclasses

    from dsen2cr import create_model
    from dsen2cr.auto import plan_scene_run
    from dsen2cr.predictor import predictor_from_model
    from dsen2cr.scene import masking
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    torch.manual_seed(0)
    predictor = predictor_from_model(create_model("dsen2cr-small-nosar").eval(), device="cpu")
    settings = SceneSettings(tile=32, keep_clear=True, progress=False)
    plan = dataclasses.replace(plan_scene_run(settings, predictor.config, device=predictor.device), band_threads=4)
    threads_asked = []
    real_stats = masking._scene_shadow_stats

    def recording_stats(*args: object, threads: int = 1, **kwargs: object) -> object:
        threads_asked.append(threads)
        return real_stats(*args, threads=threads, **kwargs)  # type: ignore[arg-type]

    safe = workdir.safe(baseline="05.10", shift=1000, offsets={i: -1000 for i in range(13)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masking, "_scene_shadow_stats", recording_stats)
        remove_clouds(predictor, SceneJob(str(safe), None, workdir / "out.tif"), plan)
    assert threads_asked == [4]


def test_the_statistics_pass_on_several_threads_is_the_one_on_one(workdir: Path, tmp_path: Path) -> None:
    """Blocks read on several threads (each through handles of its own) give the statistics of one thread bit
    for bit (the blocks' sums are added in the scene's order); a pass stopped before it starts gives None."""
    import threading

    from dsen2cr.inputs import readers
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.scene.masking import _scene_shadow_stats

    rng = np.random.default_rng(4)
    dn = rng.integers(500, 4000, size=(13, 70, 50)).astype(np.uint16)
    dn[[1, 7, 11], 5:9, :] = 0  # blocks read whole
    dn[:, 40:44, :] = 0
    scene = write_geotiff(tmp_path / "s2.tif", dn, crs=UTM, transform=ORIGIN)
    safe = workdir.safe(baseline="05.10", shift=1000, offsets={i: -1000 for i in range(13)})
    names: set[str] = set()
    real_read = readers.read_window

    def recording(dataset: object, *args: object) -> np.ndarray:
        names.add(threading.current_thread().name)
        return real_read(dataset, *args)  # type: ignore[arg-type]

    for path in (scene, safe):
        source = S2Source(str(path))
        try:
            one = _scene_shadow_stats(source, 16)
            names.clear()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(readers, "read_window", recording)
                several = _scene_shadow_stats(source, 16, threads=3)
            stopped = threading.Event()
            stopped.set()
            assert _scene_shadow_stats(source, 16, stop=stopped, threads=3) is None
        finally:
            source.close()
        assert one is not None and several == one  # every field equal, bit for bit
        assert len(names) > 1 and all(name.startswith("dsen2cr-mask-stats") for name in names), names


def _stats_by_hand(dn: np.ndarray) -> tuple[float, float, float, float]:
    """CSI and blue minimum and mean over the valid pixels (some band not 0) of a (13, h, w) DN array, the
    reflectance in float32 as the detector computes it, the means in float64."""
    r = dn.astype(np.float32) / np.float32(10000)
    valid = (dn != 0).any(axis=0)
    csi, blue = ((r[7] + r[11]) / 2)[valid], r[1][valid]
    return float(csi.min()), csi.mean(dtype=np.float64), float(blue.min()), blue.mean(dtype=np.float64)


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_the_statistics_pass_reads_only_the_bands_it_needs(workdir: Path, level: str) -> None:
    """The shadow statistics need B2, B8 and B11: where those decide which pixels are valid (one of them has data
    on every pixel of a block), the pass reads only their files; the statistics equal those computed by hand from
    the whole scene as the reader gives it (offsets removed)."""
    from dsen2cr.inputs import readers
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.scene.masking import _scene_shadow_stats

    offsets = {i: -1000 for i in range(13)}
    safe = workdir.safe(level=level, baseline="05.10", shift=1000, offsets=offsets)
    calls = []
    real_read = readers.read_window

    def counting(dataset: object, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(dataset)
        return real_read(dataset, *args, **kwargs)  # type: ignore[arg-type]

    source = S2Source(str(safe))
    try:
        whole = source.read(Window(0, 0, source.grid.width, source.grid.height))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(readers, "read_window", counting)
            stats = _scene_shadow_stats(source)
    finally:
        source.close()
    assert len(calls) == 3  # one block, three band files
    assert stats is not None
    expected = _stats_by_hand(whole)
    assert (stats.csi_min, stats.blue_min) == (expected[0], expected[2])
    assert stats.csi_mean == pytest.approx(expected[1], rel=1e-12)
    assert stats.blue_mean == pytest.approx(expected[3], rel=1e-12)


def test_the_statistics_pass_reads_every_band_where_the_three_do_not_decide(tmp_path: Path) -> None:
    """A pixel where B2, B8 and B11 are all nodata may have data in another band (a swath's edge differs between
    bands): it is valid and counts (CSI and blue 0). Blocks with such pixels are read whole; pixels with no data
    in any band do not count. Statistics equal those computed by hand, whatever the block size."""
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.scene.masking import _scene_shadow_stats

    rng = np.random.default_rng(3)
    dn = rng.integers(500, 4000, size=(13, 48, 40)).astype(np.uint16)
    dn[[1, 7, 11], 5:9, :] = 0  # the three bands empty, others not: valid, CSI and blue 0
    dn[:, 30:34, :] = 0  # no band: nodata
    dn[:, :, 36:] = 0
    path = write_geotiff(tmp_path / "s2.tif", dn, crs=UTM, transform=ORIGIN)
    expected = _stats_by_hand(dn)
    assert expected[0] == 0 and expected[2] == 0
    source = S2Source(str(path))
    try:
        for block in (16, 1024):
            stats = _scene_shadow_stats(source, block)
            assert stats is not None
            assert (stats.csi_min, stats.blue_min) == (expected[0], expected[2])
            assert stats.csi_mean == pytest.approx(expected[1], rel=1e-12)
            assert stats.blue_mean == pytest.approx(expected[3], rel=1e-12)
    finally:
        source.close()
