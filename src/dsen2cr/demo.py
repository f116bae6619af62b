"""``dsen2cr demo``: the whole workflow on the bundled real sample, on a CPU in a few minutes.

1. Train the small DSen2-CR with SAR and its twin without SAR (CARL loss) on the sample's training ROIs plus
   synthetic SEN12MS-CR-like patches (``dsen2cr data synth``): the sample is Level-2A, and the synthetic
   top-of-atmosphere spectra teach the model what Level-1C input (the real scene of step 4) looks like.
2. Export both to safetensors weights.
3. Evaluate both, and the identity baseline, on the held-out ROIs (validation and test) with the paper metrics.
4. Remove the clouds of the bundled real L1C scene (no S1 exists for it: the model without SAR does it).
5. Write ``report.md`` with the metrics table and links to the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsen2cr.config import RunConfig, load_config
from dsen2cr.evaluate import ALL_METRICS, evaluate
from dsen2cr.outputs.files import output_folder, write_text_atomic

if TYPE_CHECKING:
    from dsen2cr.scene.remove import SceneReport

log = logging.getLogger(__name__)

#: The demo's training config when none is given (bundled: ``dsen2cr config small-cpu`` prints it).
DEMO_CONFIG = "small-cpu"
#: Synthetic training patches mixed with the sample's, and the settings that keep the demo at ~3 minutes.
DEMO_SYNTHETIC = {"count": 12, "size": 128, "seed": 2020}
DEMO_OVERRIDES = {"data": {"repeats": 12}, "optim": {"epochs": 20}}
HEADLINE = ("mae", "rmse", "psnr", "ssim", "sam", "mae_cloudy", "mae_clear")
#: What the demo writes into its folder (``--overwrite`` replaces these, and refuses a folder with anything else).
DEMO_ENTRIES = (
    "data",
    "train-sar",
    "train-nosar",
    "weights",
    "evaluation-sar",
    "evaluation-nosar",
    "scene",
    "report.md",
)


def demo_training_data(out: Path) -> Path:
    """A training tree under ``out``: the bundled sample (its splits kept) plus synthetic patches (all train).

    Returns its file list.
    """
    from dsen2cr.data.layout import read_file_list, write_file_list
    from dsen2cr.data.sample import sample_dataset_root, sample_file_list
    from dsen2cr.data.synth import write_synthetic_dataset

    root = out / "data"
    synthetic, _ = write_synthetic_dataset(root, **DEMO_SYNTHETIC)
    shutil.copytree(sample_dataset_root(), root, dirs_exist_ok=True)
    sample = read_file_list(sample_file_list(), root)
    merged = sample + [dataclasses.replace(t, split=1) for t in synthetic]
    return write_file_list(merged, root / "files.csv", root)


def _demo_config(
    config_path: str | None, out: Path, include_sar: bool, file_list: Path | None, extra: list[str]
) -> RunConfig:
    """The training config of one demo model (with the demo's data when no config is given), then ``extra``
    ``section.key=value`` overrides."""
    overrides: list[str] = []
    if config_path is None:
        assert file_list is not None
        overrides = [f"{s}.{k}={v}" for s, values in DEMO_OVERRIDES.items() for k, v in values.items()]
        overrides += [f"data.root={file_list.parent}", f"data.file_list={file_list}"]
    config = load_config(config_path or DEMO_CONFIG, overrides + list(extra))
    model = dataclasses.replace(config.model, include_sar=include_sar)
    trainer = dataclasses.replace(config.trainer, out_dir=str(out / ("train-sar" if include_sar else "train-nosar")))
    return dataclasses.replace(config, model=model, trainer=trainer)


def run_demo(
    out: str | Path,
    *,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> Path:
    """Run the demo into ``out`` (``overrides``: ``section.key=value`` for both trainings; ``device`` for the
    evaluations and the scene); return the report. A demo that fails leaves nothing behind."""
    with output_folder(out, owned=DEMO_ENTRIES, overwrite=overwrite, what="a demo") as folder:
        return _run_demo(folder, config_path, overrides or [], device)


def _run_demo(out: Path, config_path: str | None, overrides: list[str], device: str) -> Path:
    """The demo's steps into a prepared folder (see :func:`run_demo`)."""
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.data.sample import sample_scene
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings
    from dsen2cr.training.train import run_training
    from dsen2cr.weights import load_model, save_weights

    file_list = None
    if config_path is None:
        log.info("[demo] writing the training data: bundled sample + synthetic patches")
        file_list = demo_training_data(out)
    summaries, weights = {}, {}
    for include_sar in (True, False):
        name = "with SAR" if include_sar else "without SAR"
        config = _demo_config(config_path, out, include_sar, file_list, overrides)
        log.info(
            "[demo] training model %s %s (%d epochs) -> %s",
            config.model.model_config().describe(),
            name,
            config.optim.epochs,
            config.trainer.out_dir,
        )
        checkpoint = run_training(config, overwrite=True, progress=False)
        weights[include_sar] = out / "weights" / f"dsen2cr-demo-{'sar' if include_sar else 'nosar'}.safetensors"
        weights[include_sar].parent.mkdir(exist_ok=True)
        save_weights(load_model(checkpoint), weights[include_sar])
        held_out = resolve_split(config.data, "val") + resolve_split(config.data, "test")
        log.info("[demo] evaluating on %d held-out images", len(held_out))
        summaries[name] = evaluate(
            load_predictor(weights[include_sar], backend="eager", device=device),
            held_out,
            out / f"evaluation-{'sar' if include_sar else 'nosar'}",
            cloud_threshold=config.loss.cloud_threshold,
        )
    log.info("[demo] removing the clouds of the bundled real L1C scene (model without SAR)")
    scene_dir = out / "scene"
    scene_dir.mkdir(exist_ok=True)
    predictor = load_predictor(weights[False], backend="eager", device=device)
    # The scene is a GeoTIFF: no product mask, the paper's detector is the best mask it allows.
    scene_name = str(sample_scene())
    plain = remove_clouds(
        predictor,
        SceneJob(
            scene_name,
            None,
            scene_dir / "T33UUU_20170216_cloudfree_all_pixels.tif",
            preview=scene_dir / "T33UUU_20170216_all_pixels.png",
        ),
        SceneSettings(progress=False),
    )
    scene = remove_clouds(
        predictor,
        SceneJob(
            scene_name,
            None,
            scene_dir / "T33UUU_20170216_cloudfree.tif",
            mask_out=scene_dir / "T33UUU_20170216_cloud_shadow_mask.tif",
            preview=scene_dir / "T33UUU_20170216_before_after.png",
        ),
        SceneSettings(keep_clear=True, progress=False),
    )
    _comparison(
        scene_dir / "T33UUU_20170216_all_pixels.png",
        scene_dir / "T33UUU_20170216_before_after.png",
        scene_dir / "T33UUU_20170216_comparison.png",
    )
    return _write_report(out, summaries, len(held_out), scene, plain)


def _comparison(plain_preview: Path, kept_preview: Path, out: Path) -> Path:
    """Input (mask outlined), output of every pixel replaced, output with --keep-clear, side by side, from the
    two runs' previews (each is input | output, with a 4 px gap)."""
    from PIL import Image

    from dsen2cr.visualize import save_png, side_by_side

    plain, kept = (np.asarray(Image.open(p).convert("RGB")) for p in (plain_preview, kept_preview))
    half = (kept.shape[1] - 4) // 2
    return save_png(out, side_by_side([kept[:, :half], plain[:, -half:], kept[:, -half:]]))


def _write_report(out: Path, summaries: dict, images: int, scene: SceneReport, plain: SceneReport) -> Path:
    """report.md: the metrics of both models against the identity baseline, and the figures."""
    rows = [
        ("DSen2-CR small, with SAR", summaries["with SAR"]["model"]),
        ("DSen2-CR small, without SAR", summaries["without SAR"]["model"]),
        ("identity (cloudy input)", summaries["with SAR"]["identity"]),
    ]
    lines = [
        "# dsen2cr demo report",
        "",
        f"Held-out ROIs of the bundled sample ({images} images, BigEarthNet S1/S2 with synthetic clouds); "
        "reflectance scale, SAM in degrees; means over images. `mae_clear` of the identity is 0 by definition.",
        "",
        "| method | " + " | ".join(HEADLINE) + " |",
        "|---|" + "---|" * len(HEADLINE),
    ]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(f"{metrics[m]['mean']:.4f}" for m in HEADLINE) + " |")
    lines += [
        "",
        "Per-image metrics, predictions (GeoTIFF) and previews: `evaluation-sar/`, `evaluation-nosar/`.",
        f"All metrics: {', '.join(ALL_METRICS)} in `evaluation-*/summary.md`.",
        "",
        "## Real cloudy scene (T33UUU, 2017-02-16, no S1: model without SAR)",
        "",
        f"`scene/T33UUU_20170216_cloudfree.tif` (`--keep-clear`: clear pixels kept, clouds and shadows replaced): "
        f"{scene.megapixels:.2f} Mpx in {scene.seconds:.1f} s, {scene.tiles} tiles; "
        f"`scene/T33UUU_20170216_cloudfree_all_pixels.tif` (every pixel predicted): {plain.seconds:.1f} s.",
        "",
        "Input with the cloud/shadow outline, every pixel predicted, `--keep-clear`:",
        "",
        "![input, all pixels, keep-clear](scene/T33UUU_20170216_comparison.png)",
        "",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines))
