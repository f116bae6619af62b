"""``dsen2cr evaluate``: per-image paper metrics of a model and of the identity baseline, predicted GeoTIFFs,
and PNG previews as the original made them. Needs no Lightning."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
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
    interval_report,
    per_band_coverage,
    pooled_sentence,
    reliability_bins,
    sparsification,
    spearman,
    stated_interval_warning,
    stated_intervals_held,
)
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.data.dataset import SEN12MSCRDataset, collate_by_size
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.evaluation_progress import PREDICTIONS, PREVIEWS, PROGRESS, evaluation_identity, open_progress
from dsen2cr.evaluation_scoring import Scorer
from dsen2cr.formats import shortened_sha256
from dsen2cr.machine import cores
from dsen2cr.metrics import (
    METRIC_NAMES,
    ORIGINAL_METRIC_NAMES,
    REGION_METRIC_NAMES,
    SSIM_WINDOW,
)
from dsen2cr.models import CloudRemovalNetwork
from dsen2cr.outputs.files import write_text_atomic
from dsen2cr.outputs.room import check_projected_room
from dsen2cr.predictor import Predictor, predictor_from_model
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.said_warnings import SAID_IN_REPORT, warnings_markdown, warnings_said
from dsen2cr.sigma_record import calibrated_on
from dsen2cr.summary import UNITS, Summary, json_text, per_roi_csv, summarise, summary_markdown
from dsen2cr.visualize import reliability_diagram

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
#: The values kept in all for the pooled calibration of a model with sigma: up to ``Scorer.SAMPLE`` a patch
#: (:mod:`dsen2cr.evaluation_scoring`), fewer where there are many (the 160 M of thousands of patches took some 20 GB
#: to calibrate at the end).
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
    #: Threads that score the patches and write their images while the model predicts the next batch; None: this
    #: process's cores, at most 8 (1: each batch scored after it is predicted, on the main thread).
    score_threads: int | None = None
    #: What the caller warned of before the run (the CLI: reading the file list and the weights), listed in the
    #: reports with what the run itself warns of (:mod:`dsen2cr.said_warnings`).
    warnings: Sequence[str] = ()


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
    with warnings_said(o.warnings) as said:  # kept for the reports, which are read without the console
        return _evaluate(model, triplets, Path(out_dir), o, said)


def _evaluate(
    model: Predictor | CloudRemovalNetwork,
    triplets: Sequence[Triplet],
    out: Path,
    o: EvaluationOptions,
    said: list[str],
) -> Summary:
    """:func:`evaluate` with its options ``o``, the warnings ``said`` (a list that grows as the run warns) listed
    in its reports."""
    if o.window is not None and 0 < o.window < SSIM_WINDOW:
        log.warning("--window %d is smaller than SSIM's %d px window: ssim stays empty", o.window, SSIM_WINDOW)
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
    scorer = _new_scorer(o, out, triplets, bool(predictor.include_sar))
    scorer.tags = predictor.provenance(with_variance=uncertain)  # settled once the first batch ran (below)
    if uncertain:  # what its calibration measured where it was fitted, counted again on every value here
        scorer.stated_intervals = getattr(predictor, "sigma_intervals", ())
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
    record = functools.partial(_record_oldest, scorer, progress, out, o.write_images, len(triplets))
    batches = itertools.chain.from_iterable(loader)  # each of a batch's sizes
    with torch.inference_mode(), bar, scorer:
        _score_batches(batches, predictor, scorer, record, bar, uncertain=uncertain, parted=parted)
    order = {t.patch_id: position for position, t in enumerate(triplets)}
    scorer.rows.sort(key=lambda row: order[row["patch_id"]])  # stable: the model's row, then the identity's
    summary = summarise(scorer.rows, names)
    provenance = {**scorer.tags, **scorer.mask_tags}
    if o.data:
        provenance["DSEN2CR_DATA"] = o.data
    per_band = per_band_coverage(scorer.rows, S2_BANDS) if uncertain else None
    held = stated_intervals_held(scorer.rows, scorer.stated_intervals, S2_BANDS) if uncertain else None
    if held and (warning := stated_interval_warning(held)):  # summary.md says it in its own words: not listed
        name = getattr(predictor, "weights", None) or "the model"
        log.warning("%s: %s", name, warning, extra={SAID_IN_REPORT: True})
    calibration = write_calibration(scorer.pooled(), out, provenance, per_band, held) if uncertain else None
    _write_reports(scorer.rows, summary, out, names, o.protocol, o.window, provenance, calibration, said)
    progress.remove()  # the report is complete
    return summary


def _new_scorer(o: EvaluationOptions, out: Path, triplets: Sequence[Triplet], include_sar: bool) -> Scorer:
    """The scorer of an evaluation with options ``o``: on ``score_threads`` threads (default: the process's cores,
    at most 8), sampling at most :data:`POOLED_CALIBRATION_VALUES` for the calibration in all."""
    threads = o.score_threads if o.score_threads is not None else min(8, cores())
    return Scorer(
        out,
        {t.patch_id: t for t in triplets},
        include_sar,
        protocol=o.protocol,
        write_images=o.write_images,
        mask=(o.mask_kind, o.cloud_threshold),
        sample=POOLED_CALIBRATION_VALUES // max(1, len(triplets)),
        threads=threads,
    )


def _score_batches(
    batches: Iterable[dict[str, Any]],
    predictor: Predictor,
    scorer: Scorer,
    record: Callable[[], None],
    bar: tqdm,
    *,
    uncertain: bool,
    parted: bool,
) -> None:
    """Predict each batch and score it (on the scorer's threads the next batch is predicted while one is scored),
    ``record`` each scored batch in order; a run stopped by an error or a signal records what it scored first."""
    try:
        for number, batch in enumerate(batches):
            bar.update(len(batch["patch_id"]))
            s1 = batch["s1"].numpy() if predictor.include_sar else None
            mean, variance, parts = _predict(predictor, batch["s2_cloudy"].numpy(), s1, uncertain, parted)
            scorer.tags = predictor.provenance(with_variance=uncertain)
            scorer.submit(number, batch, mean, variance, parts)
            while len(scorer.pending) > (1 if scorer.overlapped else 0):
                record()
    except BaseException:
        _record_scored(scorer, record)  # a stopped run keeps what it scored, for --resume
        raise
    while scorer.pending:
        record()


def _record_oldest(scorer: Scorer, progress: Any, out: Path, images: bool, total: int) -> None:
    """Wait for the oldest batch being scored and record it in the progress file (what ``--resume`` goes on from);
    after this run's first batch (``images``: they are written), check that the rest of the images will fit."""
    rows, samples = len(scorer.rows), len(scorer.samples)
    try:
        number = scorer.finish_oldest()
        if images and number == 0:  # this run's first batch: will the rest fit?
            folders = [out / PREDICTIONS, out / PREVIEWS]
            check_projected_room(out, folders, len(scorer.rows) // 2, total, what="patches", hint=ROOM_HINT)
        arithmetic = scorer.tags.get("DSEN2CR_ARITHMETIC", "unknown")
        progress.add(scorer.rows[rows:], scorer.samples[samples:], scorer.rng.bit_generator.state, arithmetic)
    except BaseException:
        scorer.failed = True  # no batch after this one is recorded
        raise


def _record_scored(scorer: Scorer, record: Callable[[], None]) -> None:
    """Record the batches being scored, in order, up to the first whose scoring or record failed (none after it: a
    run that goes on from them draws the calibration's sample as one that never stopped)."""
    while scorer.pending and not scorer.failed:
        try:
            record()
        except Exception:
            return


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


def write_calibration(
    pooled: tuple[np.ndarray, np.ndarray],
    out: Path,
    text: dict[str, str],
    per_band: dict[str, dict[str, float]] | None = None,
    stated: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The calibration over every evaluated value (a fixed sample of each patch): ``calibration.json`` (the
    pooled metrics, Spearman's rank correlation of sigma and |error|, the reliability bins, ``per_band``, each
    band's coverage over all its values, where given, the intervals of the sampled values,
    :func:`~dsen2cr.calibration.interval_report`, the share of every value that the intervals the weights'
    calibration stated held, ``stated``, where given: :func:`~dsen2cr.calibration.stated_intervals_held`, and the
    patches the calibration was fitted on where they are those evaluated, which it flatters) and the reliability
    diagram ``calibration.png`` (``text``, what made it, as PNG text); returns the JSON's content."""
    error, sigma = pooled
    data = text.get("DSEN2CR_DATA")  # None where a Python caller named no data
    fitted_here = data is not None and calibrated_on(text.get("DSEN2CR_SIGMA_CALIBRATION"), data)
    edges = np.linspace(sigma.min(), sigma.max(), CALIBRATION_BINS + 1)
    rms_sigma, rms_error, counts = reliability_bins(error, sigma, edges)
    uce, auce = errors_of_bins(rms_sigma, rms_error, counts)
    report = (
        {
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
        | ({"per_band": per_band} if per_band else {})
        | interval_report(error, sigma)
        | ({"stated_intervals": stated} if stated else {})
        | {"calibrated_on_these_patches": data if fitted_here else None}
    )
    write_text_atomic(out / "calibration.json", json_text(report))
    reliability_diagram(out / "calibration.png", rms_sigma, rms_error, counts, report, text)
    return report


def _write_reports(
    rows: list[dict[str, Any]],
    summary: dict,
    out: Path,
    names: Sequence[str],
    protocol: str,
    window: int | None,
    provenance: dict[str, str],
    calibration: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> None:
    """Per-image and per-ROI CSVs and the summary as Markdown, CSV and JSON; the Markdown and JSON say what made them
    (``provenance``: the predictions' tags, the mask and its threshold) and give the pooled ``calibration``
    of a model with sigma (:func:`write_calibration`'s, without its bins and curve) and the ``warnings`` said
    while it ran."""
    columns = ["patch_id", "roi", "method", "cloud_fraction", *names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "metrics_per_image.csv", buffer.getvalue())
    write_text_atomic(out / "metrics_per_roi.csv", per_roi_csv(rows, names))
    images = len({r["patch_id"] for r in rows})
    pooled = "\n" + pooled_sentence(calibration, images) if calibration else ""
    markdown = summary_markdown(summary, images, protocol) + pooled + warnings_markdown(warnings)
    write_text_atomic(out / "summary.md", markdown + _made_by(provenance))
    lines = ["method,statistic," + ",".join(names)]
    for method, metrics in summary.items():
        for statistic in ("mean", "median", "ci_low", "ci_high"):
            lines.append(f"{method},{statistic}," + ",".join(f"{metrics[n][statistic]:.6g}" for n in names))
    write_text_atomic(out / "summary.csv", "\n".join(lines) + "\n")
    report = {"images": images, "protocol": protocol, "window": window or None, "units": UNITS[protocol]}
    report["provenance"] = provenance
    if calibration:
        report["calibration"] = {k: v for k, v in calibration.items() if k not in ("bins", "sparsification")}
    write_text_atomic(out / "summary.json", json_text({**report, "warnings": list(warnings), "summary": summary}))


def _made_by(provenance: dict[str, str]) -> str:
    """A line of what made a report: model, weights and their SHA-256, precision, backend, version, mask, and a
    calibration of sigma where the weights hold one."""
    get = provenance.get
    digests = shortened_sha256(get("DSEN2CR_WEIGHTS_SHA256", "unknown"))  # an ensemble's, one per member
    weights = f"weights {get('DSEN2CR_WEIGHTS', 'in memory')} (SHA-256 {digests})"
    threshold = (
        f", cloud threshold {provenance['DSEN2CR_CLOUD_THRESHOLD']}" if "DSEN2CR_CLOUD_THRESHOLD" in provenance else ""
    )
    data = f" on {provenance['DSEN2CR_DATA']}" if "DSEN2CR_DATA" in provenance else ""
    arithmetic = f" ({provenance['DSEN2CR_ARITHMETIC']})" if "DSEN2CR_ARITHMETIC" in provenance else ""
    calibrated = get("DSEN2CR_SIGMA_CALIBRATION", "none")
    sigma = "" if calibrated.startswith("none") else f"; {calibrated}"
    return (
        f"\nMade{data} by {get('DSEN2CR_MODEL', 'a model')}, {weights}, "
        f"precision {get('DSEN2CR_PRECISION', 'unknown')}{arithmetic}, "
        f"backend {get('DSEN2CR_BACKEND', 'unknown')}, dsen2cr {get('DSEN2CR_VERSION', 'unknown')}; mask "
        f"{get('DSEN2CR_MASK', 'paper')}{threshold}{sigma}.\n"
    )
