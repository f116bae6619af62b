"""Calibrating a model's sigma after training (docs/design.md §6): one factor per band, fitted on held-out
patches by the likelihood that trained the model, and kept in a new weights file (``dsen2cr weights
calibrate-sigma``).

How the factors and the intervals are computed: :mod:`dsen2cr.sigma_statistics`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsen2cr.calibration import intervals_text
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.data.dataset import SEN12MSCRDataset, collate_by_size
from dsen2cr.data.layout import Triplet
from dsen2cr.ensemble import ensemble
from dsen2cr.ensemble_file import split_weights, write_ensemble_file
from dsen2cr.errors import DSen2CRError
from dsen2cr.predictor import Predictor, load_exact_predictor, predictor_from_model
from dsen2cr.preprocessing import NUM_S2_BANDS, S2_BANDS, S2_MODEL_SCALE, s2_model_to_dn
from dsen2cr.sigma_record import region_words
from dsen2cr.sigma_statistics import HeldOutData, ScaleStatistics, SigmaFit
from dsen2cr.weights import (
    LIKELIHOOD_NAMES,
    SIGMA_SCALE_KEY,
    load_model_with_provenance,
    recorded_likelihood,
    save_weights,
)

log = logging.getLogger(__name__)

#: Why weights without a variance head cannot be calibrated.
NO_SIGMA = "predicts no sigma (model.uncertainty: none); nothing to calibrate (train one with model.uncertainty=diag)"


def fit_sigma_scale(
    predictor: Predictor,
    triplets: Sequence[Triplet],
    likelihood: str,
    *,
    region: str = "all",
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit one factor per band to the sigma ``predictor`` gives on ``triplets`` (every value of every patch, or
    those under cloud and shadow: ``region``, by the paper mask at ``cloud_threshold``), by ``likelihood`` (``gnll``
    or ``lnll``)."""
    statistics = scale_statistics(
        predictor,
        triplets,
        region=region,
        cloud_threshold=cloud_threshold,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    return dataclasses.replace(statistics.fit(likelihood), cloud_threshold=cloud_threshold)


def scale_statistics(
    predictor: Predictor,
    triplets: Sequence[Triplet],
    *,
    region: str = "all",
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> ScaleStatistics:
    """The statistics of |error| / sigma that ``predictor`` gives on every value of every patch of ``triplets`` (or
    on those under cloud and shadow: ``region``, :data:`~dsen2cr.sigma_statistics.REGIONS`, by each patch's paper
    mask at ``cloud_threshold``)."""
    if predictor.uncertainty != "diag":
        raise DSen2CRError(f"{predictor.weights or 'this model'}: {NO_SIGMA}")
    if not triplets:
        raise DSen2CRError("calibrate-sigma: no patches to fit the sigma scale on")
    dataset = SEN12MSCRDataset(list(triplets), train=False, cloud_threshold=cloud_threshold)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_by_size)
    statistics = ScaleStatistics(region)
    bar = tqdm(total=len(triplets), unit="patch", desc="calibrate-sigma", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for batch in itertools.chain.from_iterable(loader):
            s1 = batch["s1"].numpy() if predictor.include_sar else None
            mean, variance = predictor.predict_with_variance(batch["s2_cloudy"].numpy(), s1)
            for i in range(mean.shape[0]):
                sigma_dn = np.sqrt(variance[i].astype(np.float64)) * S2_MODEL_SCALE
                mask = batch["cloud_mask"][i].numpy()
                statistics.add(s2_model_to_dn(mean[i]), s2_model_to_dn(batch["s2"][i]), sigma_dn, mask)
            bar.update(mean.shape[0])
    return statistics


def calibrate_weights(
    weights: str | Path,
    triplets: Sequence[Triplet],
    out: str | Path,
    *,
    data: str | HeldOutData,
    region: str = "all",
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit the sigma scale of the model in ``weights`` on ``triplets`` (held-out patches; ``data`` names them
    in the record, with how many lie in ROIs training patches come from; ``region``: every
    value or those under cloud and shadow, by the paper mask at ``cloud_threshold``) and write the weights with it
    to ``out`` (safetensors; the model's weights unchanged)."""
    model, provenance = load_model_with_provenance(weights)
    if model.config.uncertainty != "diag":
        raise DSen2CRError(f"{weights}: {NO_SIGMA}")
    earlier = model.sigma_scale_factors
    likelihood = _likelihood_of(
        recorded_likelihood(provenance),
        f"{weights}: no training record names its likelihood; sigma is fitted as a Gaussian's (gnll)",
    )
    if earlier is not None:
        log.info("%s: holds a sigma scale (%s); the new factors multiply it", weights, _range(earlier))
    predictor = predictor_from_model(model, device=device, precision="fp32")
    fitted = fit_sigma_scale(
        predictor,
        triplets,
        likelihood,
        region=region,
        cloud_threshold=cloud_threshold,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    fit = dataclasses.replace(fitted, earlier=earlier)
    model.set_sigma_scale(fit.total_scale)
    save_weights(model.cpu(), out, provenance={**provenance, SIGMA_SCALE_KEY: json.dumps(fit.record(data))})
    return fit


def calibrate_ensemble(
    weights: Sequence[str | Path],
    triplets: Sequence[Triplet],
    out: str | Path,
    *,
    data: str | HeldOutData,
    region: str = "all",
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit one factor per band to the sigma of the ensemble of ``weights`` (its members' files, or an ensemble file,
    whose factors the new ones multiply) on ``triplets`` (``data`` as
    :func:`calibrate_weights` takes it; every value or those under cloud and shadow: ``region``,
    at ``cloud_threshold``), the members run in IEEE fp32 (ONNX files as exported), and write an ensemble file of
    its members with them to ``out`` (:func:`~dsen2cr.ensemble_file.write_ensemble_file`)."""
    files, earlier = split_weights(weights)
    members = [load_exact_predictor(w, device=device) for w in files]
    predictor = ensemble(members, earlier, fitting=True)
    trained = {member.likelihood for member in members if member.uncertainty == "diag"}
    named = ", ".join(files) if earlier is None else str(earlier.path)
    if trained:
        recorded = ", ".join(sorted(text or "not recorded" for text in trained))
        why = f"{named}: the members' sigma was not trained by one recorded likelihood ({recorded})"
        likelihood = _likelihood_of(trained.pop() if len(trained) == 1 else None, f"{why}; fitted as a Gaussian's")
    else:  # sigma is the members' disagreement alone: a variance, as a Gaussian's
        likelihood = "gnll"
    if earlier is not None:
        log.info("%s: holds a sigma scale (%s); the new factors multiply it", earlier.path, _range(earlier.scale))
    fitted = fit_sigma_scale(
        predictor,
        triplets,
        likelihood,
        region=region,
        cloud_threshold=cloud_threshold,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    fit = dataclasses.replace(fitted, earlier=None if earlier is None else earlier.scale)
    write_ensemble_file(out, files, fit.record(data))
    return fit


def _likelihood_of(trained: str | None, warning: str) -> str:
    """The likelihood to fit sigma by: the one that trained it (``trained``, as a training record names it), else
    a Gaussian's, with ``warning`` said."""
    likelihood = next((key for key, text in LIKELIHOOD_NAMES.items() if text == trained), None)
    if likelihood is None:
        log.warning("%s", warning)
    return likelihood or "gnll"


def _range(scale: Sequence[float]) -> str:
    """``x 0.81 to 1.3``: a set of factors in a few characters."""
    return f"x {min(scale):.3g} to {max(scale):.3g}"


def fit_table(fit: SigmaFit) -> str:
    """The fitted factors per band and what they change on the data they were fitted on, and each band's intervals
    of the calibrated sigma there, as Markdown."""
    intervals = [  # each band's multiple of its calibrated sigma that held each share of its values
        f"| {100 * level:g} % within (x sigma) | " + " | ".join(f"{m:.3f}" for m in multiples) + " |"
        for level, multiples in fit.intervals
    ]
    rows = [
        f"sigma scale fitted by {LIKELIHOOD_NAMES[fit.likelihood]} on {fit.patches} patch{'es' * (fit.patches != 1)} "
        f"({fit.values:,} values{region_words(fit.region, fit.cloud_threshold)})",
        "",
        "| band | " + " | ".join(S2_BANDS) + " |",
        "|---|" + "---|" * NUM_S2_BANDS,
        "| factor | " + " | ".join(f"{k:.3f}" for k in fit.scale) + " |",
        "| +-1 sigma before | " + " | ".join(f"{c:.3f}" for c in fit.band_coverage_before) + " |",
        "| +-1 sigma after | " + " | ".join(f"{c:.3f}" for c in fit.band_coverage_after) + " |",
        *intervals,
        "",
        f"on these patches: mean NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f} nats per value; +-1 sigma coverage "
        f"{fit.coverage_before:.3f} -> {fit.coverage_after:.3f}",
    ]
    if fit.intervals:
        rows.append(f"intervals of the calibrated sigma on these patches: {intervals_text(fit.intervals)}")
    if fit.earlier is not None:
        rows.append(
            f"factors of the sigma the weights already scaled ({_range(fit.earlier)}): the file keeps their product"
        )
    return "\n".join(rows)
