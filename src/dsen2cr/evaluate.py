"""``dsen2cr evaluate``: per-image paper metrics of a model and of the identity baseline, predicted GeoTIFFs,
and PNG previews as the original made them. Needs no Lightning."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsen2cr.calibration import (
    CALIBRATION_BINS,
    SIGMA_PART_NAMES,
    UNCERTAINTY_METRIC_NAMES,
    errors_of_bins,
    pooled_sentence,
    reflectance_errors,
    reliability_bins,
    sigma_part_metrics,
    sparsification,
    spearman,
    uncertainty_metrics,
)
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.data.dataset import SEN12MSCRDataset, collate_by_size
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.evaluation_progress import (
    PREDICTIONS,
    PREVIEWS,
    PROGRESS,
    Scored,
    evaluation_identity,
    open_progress,
)
from dsen2cr.metrics import (
    METRIC_NAMES,
    ORIGINAL_METRIC_NAMES,
    REGION_METRIC_NAMES,
    SSIM_WINDOW,
    image_metrics,
    original_metrics,
)
from dsen2cr.models import CloudRemovalNetwork
from dsen2cr.outputs.files import write_text_atomic
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.outputs.room import check_projected_room
from dsen2cr.predictor import Predictor, predictor_from_model
from dsen2cr.preprocessing import S2_BANDS, S2_MODEL_SCALE, s1_model_to_db, s2_model_to_dn
from dsen2cr.rasters import open_raster
from dsen2cr.scene.describe import describe_bands, threshold_tags
from dsen2cr.summary import UNITS, Summary, json_text, per_roi_csv, summarise, summary_markdown
from dsen2cr.visualize import reliability_diagram, write_patch_previews

log = logging.getLogger(__name__)

ALL_METRICS = METRIC_NAMES + REGION_METRIC_NAMES
#: The metrics each protocol reports, and their units.
PROTOCOLS: dict[str, tuple[str, ...]] = {"default": ALL_METRICS, "original": ORIGINAL_METRIC_NAMES}
#: What :func:`evaluate` writes into its report folder (``--overwrite`` replaces these, nothing else).
REPORT_ENTRIES: tuple[str, ...] = (
    "metrics_per_image.csv",
    "metrics_per_roi.csv",
    "summary.md",
    "summary.csv",
    "summary.json",
    PREDICTIONS,
    PREVIEWS,
    "calibration.json",
    "calibration.png",
    PROGRESS,  # while it runs, and kept when it stops: what --resume goes on from
)
#: The values kept in all for the pooled calibration of a model with sigma: up to :attr:`_Scorer.SAMPLE` a patch,
#: fewer where there are many (the 160 M of thousands of patches took some 20 GB to calibrate at the end).
POOLED_CALIBRATION_VALUES = 2_000_000
#: What to do about a report whose images will not fit (``outputs.room.check_projected_room``).
ROOM_HINT = "free space there, choose another --out, or pass --no-images (the metrics alone)"


@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`evaluate` scores and what it writes.

    ``protocol`` ``default``: the metrics of later work (reflectance clipped to [0, 1], SAM in degrees);
    ``original``: the original code's ``eval.csv`` metrics (model units, unclipped, SAM in radians; see
    :func:`dsen2cr.metrics.original_metrics`). ``window``: score the top-left ``window`` x ``window`` pixels
    of each patch (NaN fill and mask computed on that window, as the original reads it); None: the full patch.
    ``mask_kind``: the cloud/shadow map of the region metrics, ``paper`` or ``s2cloudless``. ``progress``: a
    bar counting patches on stderr. ``data``: what the patches are (the file list and split), for the reports.
    """

    batch_size: int = 4
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD
    write_images: bool = True
    num_workers: int = 0
    protocol: str = "default"
    window: int | None = None
    mask_kind: str = "paper"
    progress: bool = False
    #: What the triplets are, for the reports' provenance (``files.csv, split test``); None: not said.
    data: str | None = None
    #: Go on from the patches that a stopped evaluation of the same patches and settings scored in the folder.
    resume: bool = False


def evaluate(
    model: Predictor | CloudRemovalNetwork,
    triplets: Sequence[Triplet],
    out_dir: str | Path,
    options: EvaluationOptions | None = None,
    **changes: Any,
) -> Summary:
    """Evaluate ``model`` (a predictor from :func:`dsen2cr.predictor.load_predictor`, e.g. an int8 ONNX file; or
    a PyTorch model, run eager fp32 on its device); write reports (and predictions and previews) to ``out_dir``.
    ``options`` (:class:`EvaluationOptions`), with ``changes`` to its fields given as keywords. Each batch is
    recorded in ``out_dir/progress`` as it is scored (:mod:`dsen2cr.evaluation_progress`), removed once the report
    is written; with ``resume`` a stopped evaluation's progress there is gone on from.

    Returns the summary: ``{method: {metric: {"mean": x, "median": y, "ci_low": …, "ci_high": …, "rois": n}}}``
    for the model and the identity baseline (the cloudy input taken as the prediction); the interval is the
    mean's, each ROI a cluster (:func:`dsen2cr.summary.summarise`).
    """
    o = dataclasses.replace(options or EvaluationOptions(), **changes)
    if o.window is not None and 0 < o.window < SSIM_WINDOW:
        log.warning("--window %d is smaller than SSIM's %d px window: ssim stays empty", o.window, SSIM_WINDOW)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if o.protocol not in PROTOCOLS:
        raise DSen2CRError(f"protocol: expected one of {sorted(PROTOCOLS)}, got {o.protocol!r}")
    predictor = (
        predictor_from_model(model, device=next(model.parameters()).device)
        if isinstance(model, CloudRemovalNetwork)
        else model
    )
    # a model that predicts its variance is also judged on it (the original protocol has no such columns)
    uncertain = o.protocol == "default" and getattr(predictor, "uncertainty", "none") == "diag"
    parted = uncertain and predictor.has_variance_parts  # an ensemble's aleatoric and epistemic sigma too
    names = (
        PROTOCOLS[o.protocol] + (UNCERTAINTY_METRIC_NAMES if uncertain else ()) + (SIGMA_PART_NAMES if parted else ())
    )
    scorer = _Scorer(o, out, {t.patch_id: t for t in triplets}, bool(predictor.include_sar))
    scorer.tags = predictor.provenance(with_variance=uncertain)  # settled once the first batch ran (below)
    settings = {"protocol": o.protocol, "window": f"{o.window} px" if o.window else "the full patch"}
    settings |= {"mask": o.mask_kind, "cloud threshold": f"{o.cloud_threshold:g}", "data": o.data or "not said"}
    settings["images"] = "written" if o.write_images else "not written (--no-images)"
    identity = evaluation_identity([t.patch_id for t in triplets], settings, scorer.tags)
    progress, scored = open_progress(out, identity, resume=o.resume, images=o.write_images)
    scorer.restore(scored)
    scored_ids = scored.patch_ids  # a set made once (built for every triplet, thousands of times over)
    remaining = [t for t in triplets if t.patch_id not in scored_ids]
    dataset = SEN12MSCRDataset(
        remaining, train=False, cloud_threshold=o.cloud_threshold, window=o.window or None, mask=o.mask_kind
    )
    loader = DataLoader(dataset, batch_size=o.batch_size, num_workers=o.num_workers, collate_fn=collate_by_size)
    bar = tqdm(total=len(triplets), unit="patch", desc="evaluate", disable=not o.progress, dynamic_ncols=True)
    bar.update(len(triplets) - len(remaining))
    with torch.inference_mode(), bar:
        for number, batch in enumerate(itertools.chain.from_iterable(loader)):  # each of a batch's sizes
            bar.update(len(batch["patch_id"]))
            s1 = batch["s1"].numpy() if model.include_sar else None
            mean, variance, parts = _predict(predictor, batch["s2_cloudy"].numpy(), s1, uncertain, parted)
            scorer.tags = predictor.provenance(with_variance=uncertain)
            rows, samples = len(scorer.rows), len(scorer.samples)
            scorer.score(batch, mean, variance, parts)
            if o.write_images and number == 0:  # this run's first batch: will the rest fit?
                images = [out / PREDICTIONS, out / PREVIEWS]
                check_projected_room(out, images, len(scorer.rows) // 2, len(triplets), what="patches", hint=ROOM_HINT)
            progress.add(scorer.rows[rows:], scorer.samples[samples:], scorer.rng.bit_generator.state)
    order = {t.patch_id: position for position, t in enumerate(triplets)}
    scorer.rows.sort(key=lambda row: order[row["patch_id"]])  # stable: the model's row, then the identity's
    summary = summarise(scorer.rows, names)
    provenance = {**scorer.tags, **scorer.mask_tags}
    if o.data:
        provenance["DSEN2CR_DATA"] = o.data
    calibration = write_calibration(scorer.pooled(), out, provenance) if uncertain else None
    _write_reports(scorer.rows, summary, out, names, o.protocol, o.window, provenance, calibration)
    progress.remove()  # the report is complete
    return summary


def _predict(
    predictor: Predictor, s2: np.ndarray, s1: np.ndarray | None, uncertain: bool, parted: bool
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
    """One batch's prediction, its variance (``uncertain``) and an ensemble's aleatoric and epistemic parts of
    it (``parted``), as tensors (model units)."""
    if parted:
        mean, aleatoric, epistemic = predictor.predict_variance_parts(s2, s1)
        parts = [torch.from_numpy(aleatoric), torch.from_numpy(epistemic)]
        return torch.from_numpy(mean), parts[0] + parts[1], parts
    if uncertain:
        mean, variance = predictor.predict_with_variance(s2, s1)
        return torch.from_numpy(mean), torch.from_numpy(variance), None
    return torch.from_numpy(predictor(s2, s1)), None, None


class _Scorer:
    """Scores the patches of each batch (model and identity rows), writes their images, and keeps a sample of
    (|error|, sigma) values for the reliability diagram."""

    #: Values per patch kept for the pooled calibration (a fixed random subset), at most.
    SAMPLE = 20_000

    def __init__(self, options: EvaluationOptions, out: Path, by_id: dict[str, Triplet], include_sar: bool) -> None:
        self.options, self.out, self.by_id = options, out, by_id
        self.include_sar = include_sar  # the figure shows the SAR input only to a model that reads it
        self.tags: dict[str, str] = {}  # what computed the predictions (set once the first batch ran)
        self.rows: list[dict[str, Any]] = []
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []
        self.sample = max(1, min(self.SAMPLE, POOLED_CALIBRATION_VALUES // max(1, len(by_id))))
        self.rng = np.random.default_rng(0)
        mask, threshold = options.mask_kind, options.cloud_threshold  # the map the region metrics use
        self.mask_tags = {"DSEN2CR_MASK": mask} | threshold_tags(mask, threshold)

    def score(
        self,
        batch: dict[str, Any],
        pred: torch.Tensor,
        variance: torch.Tensor | None,
        parts: list[torch.Tensor] | None = None,
    ) -> None:
        """Score one batch of predictions (model units) and, for a model with uncertainty, their variances
        (and an ensemble's aleatoric and epistemic ``parts`` of them)."""
        for i, patch_id in enumerate(batch["patch_id"]):
            pred_dn = s2_model_to_dn(pred[i])
            cloudy_dn = s2_model_to_dn(batch["s2_cloudy"][i])
            target_dn = s2_model_to_dn(batch["s2"][i])
            mask = batch["cloud_mask"][i].numpy()
            for method, candidate in (("model", pred_dn), ("identity", cloudy_dn)):
                if self.options.protocol == "original":
                    unclipped = pred[i] if method == "model" else batch["s2_cloudy"][i]
                    values = _original(unclipped, batch["s2"][i], batch["s2_cloudy"][i], batch["cloud_mask"][i])
                else:
                    values = image_metrics(candidate, target_dn, cloudy=cloudy_dn, mask=mask)
                if method == "model" and variance is not None:
                    sigma_dn = variance[i].double().sqrt().numpy() * S2_MODEL_SCALE
                    values.update(uncertainty_metrics(pred_dn, target_dn, sigma_dn))
                    if parts is not None:
                        values.update(
                            sigma_part_metrics(*(p[i].double().sqrt().numpy() * S2_MODEL_SCALE for p in parts))
                        )
                    self._keep_sample(pred_dn, target_dn, sigma_dn)
                cloud_fraction = float((mask != 0).mean())
                roi = self.by_id[patch_id].roi
                self.rows.append(
                    {"patch_id": patch_id, "roi": roi, "method": method, "cloud_fraction": cloud_fraction, **values}
                )
            if self.options.write_images:
                _write_prediction(self.by_id[patch_id], pred_dn, self.out / PREDICTIONS, self.tags)
                s1_db = s1_model_to_db(batch["s1"][i].numpy()) if self.include_sar else None
                images = {"cloudy": cloudy_dn, "target": target_dn, "prediction": pred_dn}
                caption = _caption(patch_id, self.rows[-2], self.rows[-1], self.options.protocol)
                text = {**self.tags, **self.mask_tags, "DSEN2CR_PATCH": patch_id}  # what made the pictures
                write_patch_previews(patch_id, s1_db, images, mask, caption, self.out / PREVIEWS, text)

    def restore(self, scored: Scored) -> None:
        """Go on from what a stopped run ``scored``: its rows, samples and the sampler's state after them."""
        self.rows, self.samples = list(scored.rows), list(scored.samples)
        if scored.sampler is not None:
            self.rng.bit_generator.state = scored.sampler

    def _keep_sample(self, pred_dn: np.ndarray, target_dn: np.ndarray, sigma_dn: np.ndarray) -> None:
        """Keep up to :attr:`sample` random (|error|, sigma) values of a patch (reflectance)."""
        error, sigma = reflectance_errors(pred_dn, target_dn, sigma_dn)
        if error.size > self.sample:
            chosen = self.rng.choice(error.size, self.sample, replace=False)
            error, sigma = error[chosen], sigma[chosen]
        self.samples.append((error, sigma))

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept (|error|, sigma) values of every patch."""
        return np.concatenate([e for e, _ in self.samples]), np.concatenate([s for _, s in self.samples])


def write_calibration(pooled: tuple[np.ndarray, np.ndarray], out: Path, text: dict[str, str]) -> dict[str, Any]:
    """The calibration over every evaluated value (a fixed sample of each patch): ``calibration.json`` (the
    pooled metrics, Spearman's rank correlation of sigma and |error|, and the reliability bins) and the
    reliability diagram ``calibration.png`` (``text``, what made it, as PNG text); returns the JSON's content."""
    error, sigma = pooled
    edges = np.linspace(sigma.min(), sigma.max(), CALIBRATION_BINS + 1)
    rms_sigma, rms_error, counts = reliability_bins(error, sigma, edges)
    uce, auce = errors_of_bins(rms_sigma, rms_error, counts)
    report = {
        "units": "reflectance (DN / 10000); sigma and |error| per pixel value",
        "values": int(error.size),
        "coverage_1sigma": float((error <= sigma).mean()),
        "coverage_2sigma": float((error <= 2 * sigma).mean()),
        "uce": uce,
        "auce": auce,
        "spearman_sigma_abs_error": spearman(error, sigma),
        "ause": (curve := sparsification(error, sigma))["ause"],
        "sparsification": curve,
        "bins": {
            "edges": edges.tolist(),
            "rms_sigma": [None if math.isnan(v) else v for v in rms_sigma.tolist()],
            "rms_error": [None if math.isnan(v) else v for v in rms_error.tolist()],
            "counts": counts.astype(int).tolist(),
        },
    }
    write_text_atomic(out / "calibration.json", json_text(report))
    reliability_diagram(out / "calibration.png", rms_sigma, rms_error, counts, report, text)
    return report


def _original(pred: torch.Tensor, target: torch.Tensor, cloudy: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The original's metrics of one image (model units, float64)."""
    p, t, c = (x.to(torch.float64)[None] for x in (pred, target, cloudy))
    values = original_metrics(p, t, c, torch.as_tensor(mask)[None])
    return {name: float(value[0]) for name, value in values.items()}


def _write_reports(
    rows: list[dict[str, Any]],
    summary: dict,
    out: Path,
    names: Sequence[str],
    protocol: str,
    window: int | None,
    provenance: dict[str, str],
    calibration: dict[str, Any] | None = None,
) -> None:
    """Per-image and per-ROI CSVs and the summary as Markdown, CSV and JSON; the Markdown and JSON say what made them
    (``provenance``: the predictions' tags, the mask and its threshold) and give the pooled ``calibration``
    of a model with sigma (:func:`write_calibration`'s, without its bins and curve)."""
    columns = ["patch_id", "roi", "method", "cloud_fraction", *names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "metrics_per_image.csv", buffer.getvalue())
    write_text_atomic(out / "metrics_per_roi.csv", per_roi_csv(rows, names))
    images = len({r["patch_id"] for r in rows})
    pooled = "\n" + pooled_sentence(calibration, images) if calibration else ""
    write_text_atomic(out / "summary.md", summary_markdown(summary, images, protocol) + pooled + _made_by(provenance))
    lines = ["method,statistic," + ",".join(names)]
    for method, metrics in summary.items():
        for statistic in ("mean", "median", "ci_low", "ci_high"):
            lines.append(f"{method},{statistic}," + ",".join(f"{metrics[n][statistic]:.6g}" for n in names))
    write_text_atomic(out / "summary.csv", "\n".join(lines) + "\n")
    report = {"images": images, "protocol": protocol, "window": window or None, "units": UNITS[protocol]}
    report["provenance"] = provenance
    if calibration:
        report["calibration"] = {k: v for k, v in calibration.items() if k not in ("bins", "sparsification")}
    write_text_atomic(out / "summary.json", json_text({**report, "summary": summary}))


def _made_by(provenance: dict[str, str]) -> str:
    """A line of what made a report: model, weights and their SHA-256, precision, backend, version, mask."""
    get = provenance.get
    members = get("DSEN2CR_WEIGHTS_SHA256", "unknown").split(";")  # an ensemble's, one per member
    digests = "; ".join(d if d == "unknown" else f"{d[:12]}…" for d in members)
    weights = f"weights {get('DSEN2CR_WEIGHTS', 'in memory')} (SHA-256 {digests})"
    threshold = (
        f", cloud threshold {provenance['DSEN2CR_CLOUD_THRESHOLD']}" if "DSEN2CR_CLOUD_THRESHOLD" in provenance else ""
    )
    data = f" on {provenance['DSEN2CR_DATA']}" if "DSEN2CR_DATA" in provenance else ""
    return (
        f"\nMade{data} by {get('DSEN2CR_MODEL', 'a model')}, {weights}, "
        f"precision {get('DSEN2CR_PRECISION', 'unknown')}, "
        f"backend {get('DSEN2CR_BACKEND', 'unknown')}, dsen2cr {get('DSEN2CR_VERSION', 'unknown')}; mask "
        f"{get('DSEN2CR_MASK', 'paper')}{threshold}.\n"
    )


def _write_prediction(triplet: Triplet, pred_dn: np.ndarray, folder: Path, tags: dict[str, str]) -> None:
    """The prediction as a uint16 GeoTIFF with the cloudy input's georeferencing, and what a scene output says
    of itself: band names, reflectance scale, red/green/blue hints, what computed it (``tags``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open_raster(triplet.s2_cloudy, what="S2 cloudy") as src:
        crs, transform = src.crs, src.transform

    def describe(dataset: Any) -> None:
        describe_bands(dataset, list(S2_BANDS))
        dataset.update_tags(**tags, DSEN2CR_RADIOMETRY="reflectance x 10000 (the patch's DN)")

    write_geotiff(folder / f"{triplet.patch_id}.tif", pred_dn, crs=crs, transform=transform, describe=describe)


def _caption(patch_id: str, model: dict[str, Any], identity: dict[str, Any], protocol: str) -> str:
    """The figure's first line: the patch and how the model did against leaving the clouds."""
    if protocol != "default":
        return f"{patch_id} (cloud cover {model['cloud_fraction']:.0%})"
    return (
        f"{patch_id}, cloud cover {model['cloud_fraction']:.0%}: model MAE {model['mae']:.4f}, "
        f"PSNR {model['psnr']:.2f} dB, SSIM {model['ssim']:.3f}, SAM {model['sam']:.2f} deg "
        f"(cloudy input: MAE {identity['mae']:.4f}, PSNR {identity['psnr']:.2f} dB)"
    )
