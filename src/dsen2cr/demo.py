"""``dsen2cr demo``: the whole workflow on the bundled real sample, on a CPU in a few minutes.

1. Train the small DSen2-CR with SAR, its twin without SAR (CARL loss), and a third without SAR that also
   predicts its uncertainty (Gaussian NLL, cloud-aware), on the sample's training ROIs plus
   synthetic SEN12MS-CR-like patches (``dsen2cr data synth``): the sample is Level-2A, and the synthetic
   top-of-atmosphere spectra teach the model what Level-1C input (the real scene of step 4) looks like.
2. Export them to safetensors weights.
3. Evaluate them, and the identity baseline, on the held-out ROIs (validation and test) with the paper metrics
   (and the calibration of the third's sigma).
4. Remove the clouds of the bundled real L1C scene (no S1 exists for it: the models without SAR do it; the
   third also writes its sigma map).
5. Write ``report.md`` with the metrics table and links to the figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsen2cr.config import RunConfig, load_config
from dsen2cr.evaluate import ALL_METRICS, evaluate
from dsen2cr.outputs.files import output_folder, write_text_atomic

if TYPE_CHECKING:
    from dsen2cr.scene.remove import SceneReport

log = logging.getLogger(__name__)

#: The demo's training config when none is given (bundled: ``dsen2cr config small-cpu`` prints it).
DEMO_CONFIG = "small-cpu"
#: Synthetic training patches mixed with the sample's, and the settings that keep the demo at ~4.5 minutes.
DEMO_SYNTHETIC = {"count": 12, "size": 128, "seed": 2020}
DEMO_OVERRIDES = {"data": {"repeats": 12}, "optim": {"epochs": 20}}
HEADLINE = ("mae", "rmse", "psnr", "ssim", "sam", "mae_cloudy", "mae_clear")
#: What the demo writes into its folder (``--overwrite`` replaces these, and refuses a folder with anything else).
DEMO_ENTRIES = (
    "data",
    "train-sar",
    "train-nosar",
    "train-uncertainty",
    "weights",
    "evaluation-sar",
    "evaluation-nosar",
    "evaluation-uncertainty",
    "scene",
    "report.md",
)
#: The demo's models: (name, folder suffix, SAR, extra overrides). The third predicts its uncertainty.
DEMO_MODELS = (
    ("with SAR", "sar", True, ()),
    ("without SAR", "nosar", False, ()),
    (
        "without SAR, with sigma",
        "uncertainty",
        False,
        ("model.uncertainty=diag", "loss.name=gnll", "loss.cloud_aware=true"),
    ),
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
    config_path: str | None, out: Path, include_sar: bool, file_list: Path | None, extra: list[str], folder: str
) -> RunConfig:
    """The training config of one demo model (with the demo's data when no config is given), then ``extra``
    ``section.key=value`` overrides; its run goes to ``out/train-FOLDER``."""
    overrides: list[str] = []
    if config_path is None:
        assert file_list is not None
        overrides = [f"{s}.{k}={v}" for s, values in DEMO_OVERRIDES.items() for k, v in values.items()]
        overrides += [f"data.root={file_list.parent}", f"data.file_list={file_list}"]
    config = load_config(config_path or DEMO_CONFIG, overrides + list(extra))
    model = dataclasses.replace(config.model, include_sar=include_sar)
    trainer = dataclasses.replace(config.trainer, out_dir=str(out / f"train-{folder}"))
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
    from dsen2cr.predictor import load_predictor
    from dsen2cr.training.train import run_training
    from dsen2cr.weights import load_model_with_provenance, save_weights

    file_list = None
    if config_path is None:
        log.info("[demo] writing the training data: bundled sample + synthetic patches")
        file_list = demo_training_data(out)
    summaries, weights = {}, {}
    for name, folder, include_sar, extra in DEMO_MODELS:
        config = _demo_config(config_path, out, include_sar, file_list, [*overrides, *extra], folder)
        epochs = config.optim.epochs
        log.info(
            "[demo] training the model %s (%s, %d epoch%s) -> %s",
            name,
            config.model.model_config().describe(),
            epochs,
            "" if epochs == 1 else "s",
            config.trainer.out_dir,
        )
        checkpoint = run_training(config, overwrite=True, progress=False)
        weights[folder] = out / "weights" / f"dsen2cr-demo-{folder}.safetensors"
        weights[folder].parent.mkdir(exist_ok=True)
        model, provenance = load_model_with_provenance(checkpoint)  # what made them, as `export` records it
        save_weights(model, weights[folder], provenance=provenance)
        held_out = resolve_split(config.data, "val") + resolve_split(config.data, "test")
        log.info("[demo] evaluating on %d held-out images", len(held_out))
        summaries[name] = evaluate(
            load_predictor(weights[folder], backend="eager", device=device),
            held_out,
            out / f"evaluation-{folder}",
            cloud_threshold=config.loss.cloud_threshold,
        )
    scenes = _demo_scene(out / "scene", weights, device)
    return _write_report(out, summaries, len(held_out), scenes)


def _demo_scene(scene_dir: Path, weights: dict[str, Path], device: str) -> dict[str, SceneReport]:
    """The bundled real L1C scene (no S1: the models without SAR) with every pixel predicted, with
    ``--keep-clear`` (and its STAC item), and with ``--keep-clear`` by the model with sigma
    (``--uncertainty-out``); the comparison figure of the first two."""
    from dsen2cr.data.sample import sample_scene
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    log.info("[demo] removing the clouds of the bundled real L1C scene (models without SAR)")
    scene_dir.mkdir(exist_ok=True)
    predictor = load_predictor(weights["nosar"], backend="eager", device=device)
    # The scene is a GeoTIFF: no product mask, the paper's detector is the best mask it allows.
    scene_name, stem = str(sample_scene()), scene_dir / "T33UUU_20170216"

    def job(out: str, **outputs: str) -> SceneJob:
        """A job of the scene whose outputs are named ``T33UUU_20170216_<name>``."""
        paths: dict[str, Any] = {k: Path(f"{stem}_{v}") for k, v in outputs.items()}
        return SceneJob(scene_name, None, Path(f"{stem}_{out}"), **paths)

    plain = job("cloudfree_all_pixels.tif", preview="all_pixels.png")
    kept = job(
        "cloudfree.tif", mask_out="cloud_shadow_mask.tif", preview="before_after.png", stac_item="cloudfree.json"
    )
    uncertain = job("cloudfree_sigma_model.tif", preview="sigma.png", uncertainty_out="sigma.tif")
    reports = {
        "plain": remove_clouds(predictor, plain, SceneSettings(progress=False)),
        "kept": remove_clouds(predictor, kept, SceneSettings(keep_clear=True, progress=False)),
    }
    sigma_predictor = load_predictor(weights["uncertainty"], backend="eager", device=device)
    reports["sigma"] = remove_clouds(sigma_predictor, uncertain, SceneSettings(keep_clear=True, progress=False))
    _comparison(Path(f"{stem}_all_pixels.png"), Path(f"{stem}_before_after.png"), Path(f"{stem}_comparison.png"))
    return reports


def _comparison(plain_preview: Path, kept_preview: Path, out: Path) -> Path:
    """Input (mask outlined), output of every pixel replaced, output with --keep-clear, side by side, from the
    two runs' previews (each is input | output, with a 4 px gap)."""
    from PIL import Image

    from dsen2cr.visualize import save_png, side_by_side

    plain, kept = (np.asarray(Image.open(p).convert("RGB")) for p in (plain_preview, kept_preview))
    with Image.open(kept_preview) as preview:
        text = dict(preview.text)  # what made it (the previews record it)
    text["DSEN2CR_KEEP_CLEAR"] = f"middle panel: no (every pixel); right panel: {text.get('DSEN2CR_KEEP_CLEAR')}"
    half = (kept.shape[1] - 4) // 2
    return save_png(out, side_by_side([kept[:, :half], plain[:, -half:], kept[:, -half:]]), text)


def _write_report(out: Path, summaries: dict, images: int, scenes: dict[str, SceneReport]) -> Path:
    """report.md: the metrics of the three models against the identity baseline, the calibration of sigma,
    and the figures."""
    rows = [(f"DSen2-CR small, {name}", summaries[name]["model"]) for name, *_ in DEMO_MODELS]
    rows.append(("identity (cloudy input)", summaries["with SAR"]["identity"]))
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
    sigma = summaries["without SAR, with sigma"]["model"]
    scene, plain, uncertain = scenes["kept"], scenes["plain"], scenes["sigma"]
    pooled = json.loads((out / "evaluation-uncertainty" / "calibration.json").read_text())
    lines += [
        "",
        f"The model with sigma (Gaussian NLL, cloud-aware) on the same images, pooled over their {pooled['values']:,} "
        "sampled values as in its reliability diagram `evaluation-uncertainty/calibration.png`: +-1 sigma coverage "
        f"{pooled['coverage_1sigma']:.3f} (0.683 when calibrated), +-2 sigma {pooled['coverage_2sigma']:.3f} (0.954), "
        f"UCE {pooled['uce']:.4f} (averaged per image: {sigma['uce']['mean']:.4f}); MAE of its most certain 10 % of "
        f"values {sigma['mae_certain10']['mean']:.4f}, of 90 % {sigma['mae_certain90']['mean']:.4f} (means over "
        f"images); AUSE {pooled['ause']:.4f} (pooled: the MAE left as the most uncertain values are removed, against "
        "removing the largest errors; 0 when sigma ranks the errors exactly).",
        "",
        "Per-image metrics, predictions (GeoTIFF) and previews: `evaluation-sar/`, `evaluation-nosar/`, "
        "`evaluation-uncertainty/`.",
        f"All metrics: {', '.join(ALL_METRICS)} in `evaluation-*/summary.md`, with each mean's 95 % confidence "
        "interval (two images of two ROIs: wide). Two models patch by patch, from this folder: `dsen2cr compare "
        "evaluation-nosar evaluation-sar`.",
        "",
        "## Real cloudy scene (T33UUU, 2017-02-16, no S1: models without SAR)",
        "",
        f"`scene/T33UUU_20170216_cloudfree.tif` (`--keep-clear`: clear pixels kept, clouds and shadows replaced): "
        f"{scene.megapixels:.2f} Mpx in {scene.seconds:.1f} s, {scene.tiles} tiles; "
        f"`scene/T33UUU_20170216_cloudfree_all_pixels.tif` (every pixel predicted): {plain.seconds:.1f} s. The "
        "first one's STAC item, to add it to a catalogue: `scene/T33UUU_20170216_cloudfree.json`.",
        "",
        "Input with the cloud/shadow outline, every pixel predicted, `--keep-clear`:",
        "",
        "![input, all pixels, keep-clear](scene/T33UUU_20170216_comparison.png)",
        "",
        f"The model with sigma, `--keep-clear --uncertainty-out` ({uncertain.seconds:.1f} s): "
        "`scene/T33UUU_20170216_sigma.tif` (sigma per band, DN; 0 where the input is kept):",
        "",
        "![input, output, mean sigma](scene/T33UUU_20170216_sigma.png)",
        "",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines))
