"""Calibrating a model's sigma after training (docs/design.md §6): one factor per band, fitted on held-out
patches by the likelihood that trained the model, and kept in a new weights file (``dsen2cr weights
calibrate-sigma``).

A network trained with a likelihood learns sigma on its training patches, where its errors are smaller than on
ground it has not seen: its sigma is then too small elsewhere (or, with a cloud-aware weighting or few
epochs, too large). Scaling each band's sigma by one factor (sigma scaling, Laves et al. 2020; the variance
scaling of Kuleshov et al. 2018 with one parameter) keeps how sigma ranks the pixels and fixes its size: the
factor that maximises the likelihood of held-out targets is, per band c over its values,

- Gaussian (``gnll``): ``k_c = sqrt(mean(z^2))``;
- Laplace (``lnll``, scale b = sigma / sqrt 2): ``k_c = sqrt(2) * mean(|z|)``;

with ``z = (prediction - target) / sigma``, the prediction and the target as reflectance clipped to [0, 1] (the
metrics' convention, :mod:`dsen2cr.calibration`). Fitted on the output of weights that already hold factors,
the new ones multiply them (the same fit as from the raw sigma: both statistics are homogeneous in sigma).

The errors' tails are rarely a Gaussian's, so +-1 sigma after the fit need not hold 68.3 % of the values, nor
+-1.645 sigma 90 %. The fit also measures, on the same values, the multiple of each band's calibrated sigma that
holds each share of :data:`INTERVAL_LEVELS` of that band's values (split conformal prediction with the normalised
score |error| / sigma, per band: the ceil(p (n + 1))-th smallest score of n), read from the histogram of ln|z|
rounded up to the edge of its bin, so that on those values each band's interval holds at least its share.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsen2cr.calibration import INTERVAL_LEVELS, Intervals, intervals_text, reflectance_errors
from dsen2cr.data.dataset import SEN12MSCRDataset, collate_by_size
from dsen2cr.data.layout import Triplet
from dsen2cr.ensemble import ensemble
from dsen2cr.ensemble_file import split_weights, write_ensemble_file
from dsen2cr.errors import DSen2CRError
from dsen2cr.predictor import Predictor, load_exact_predictor, predictor_from_model
from dsen2cr.preprocessing import NUM_S2_BANDS, S2_BANDS, S2_MODEL_SCALE, s2_model_to_dn
from dsen2cr.weights import (
    LIKELIHOOD_NAMES,
    SIGMA_SCALE_KEY,
    load_model_with_provenance,
    recorded_likelihood,
    save_weights,
)

log = logging.getLogger(__name__)

#: The edges of the bins of ln|z| that the coverage before and after scaling is read from (|z| from 8e-7 to
#: 3000; 0.005 wide: coverage within about 0.1 % of the exact count; smaller |z|, exact zeros included, in the
#: first bin, larger in the last).
LOG_Z_EDGES = np.linspace(-14.0, 8.0, 4401)

#: Why weights without a variance head cannot be calibrated.
NO_SIGMA = "predicts no sigma (model.uncertainty: none); nothing to calibrate (train one with model.uncertainty=diag)"


@dataclass(frozen=True)
class SigmaFit:
    """The factors fitted on held-out patches and what they change there (mean negative log-likelihood per value
    in nats, sigma as reflectance; the share of values within +-1 sigma), over every band's values."""

    likelihood: str
    patches: int
    values: int
    scale: tuple[float, ...]
    nll_before: float
    nll_after: float
    #: Each band's +-1 sigma coverage on the patches fitted on, before and after its factor.
    band_coverage_before: tuple[float, ...]
    band_coverage_after: tuple[float, ...]
    #: (share of the values, each band's multiple of its calibrated sigma that held that share of its values there):
    #: the shares of :data:`INTERVAL_LEVELS` that the values could measure.
    intervals: Intervals = ()
    #: The factors the weights already held, which the fitted ones multiply (None: sigma as trained).
    earlier: tuple[float, ...] | None = None

    @property
    def coverage_before(self) -> float:
        """The +-1 sigma coverage of every value before the factors (each band holds as many values)."""
        return float(np.mean(self.band_coverage_before))

    @property
    def coverage_after(self) -> float:
        """The +-1 sigma coverage of every value after the factors."""
        return float(np.mean(self.band_coverage_after))

    @property
    def total_scale(self) -> list[float]:
        """The factors a weights file keeps: the fitted ones times :attr:`earlier`."""
        return [k * e for k, e in zip(self.scale, self.earlier or [1.0] * NUM_S2_BANDS, strict=True)]

    def record(self, data: str) -> dict[str, object]:
        """What a weights file keeps (:data:`~dsen2cr.weights.SIGMA_SCALE_KEY`): the factors
        (:attr:`total_scale`), the likelihood, the data they were fitted on (``data``), how many values, and the
        intervals measured there (``intervals``: share of the values -> each band's multiple of sigma)."""
        fitted = {"likelihood": self.likelihood, "data": data, "patches": self.patches, "values": self.values}
        intervals = {"intervals": {f"{level:g}": list(multiples) for level, multiples in self.intervals}}
        return {"scale": self.total_scale} | fitted | (intervals if self.intervals else {})


class ScaleStatistics:
    """Per band, in float64: the count of values, the sums of z^2, |z| and ln sigma (reflectance), and a
    histogram of ln|z| (:data:`LOG_Z_EDGES`)."""

    def __init__(self) -> None:
        self.count = np.zeros(NUM_S2_BANDS)
        self.sum_z2 = np.zeros(NUM_S2_BANDS)
        self.sum_abs_z = np.zeros(NUM_S2_BANDS)
        self.sum_log_sigma = np.zeros(NUM_S2_BANDS)
        self.histogram = np.zeros((NUM_S2_BANDS, LOG_Z_EDGES.size - 1))
        self.patches = 0

    def add(self, pred_dn: np.ndarray, target_dn: np.ndarray, sigma_dn: np.ndarray) -> None:
        """One patch: prediction and target (13, H, W) DN, sigma (13, H, W) DN."""
        error, sigma = (a.reshape(NUM_S2_BANDS, -1) for a in reflectance_errors(pred_dn, target_dn, sigma_dn))
        z = error / sigma
        self.count += z.shape[1]
        self.sum_z2 += np.square(z).sum(axis=1)
        self.sum_abs_z += z.sum(axis=1)
        self.sum_log_sigma += np.log(sigma).sum(axis=1)
        with np.errstate(divide="ignore"):
            log_z = np.clip(np.log(z), LOG_Z_EDGES[0], LOG_Z_EDGES[-1])
        for band in range(NUM_S2_BANDS):
            self.histogram[band] += np.histogram(log_z[band], bins=LOG_Z_EDGES)[0]
        self.patches += 1

    def fit(self, likelihood: str) -> SigmaFit:
        """The factors that maximise ``likelihood`` (``gnll`` or ``lnll``) of the values added, and the mean NLL
        and the +-1 sigma coverage before and after."""
        if not self.count.any():
            raise DSen2CRError("calibrate-sigma: no values to fit the sigma scale on (no patches)")
        if likelihood == "gnll":
            scale = np.sqrt(self.sum_z2 / self.count)
        else:
            scale = math.sqrt(2.0) * self.sum_abs_z / self.count
        exact = [band for band, k in zip(S2_BANDS, scale, strict=True) if not k > 0]
        if exact:  # every value predicted exactly: the likelihood grows without bound as sigma shrinks to 0
            raise DSen2CRError(
                f"calibrate-sigma: every value of band {', '.join(exact)} is predicted exactly on the "
                f"{self.patches} patch{'es' * (self.patches != 1)} given, so its sigma has no scale to fit; fit on "
                "more patches"
            )
        ones = np.ones(NUM_S2_BANDS)
        return SigmaFit(
            likelihood,
            self.patches,
            int(self.count.sum()),
            tuple(float(k) for k in scale),
            self._mean_nll(likelihood, ones),
            self._mean_nll(likelihood, scale),
            tuple((self._inside(ones) / self.count).tolist()),
            tuple((self._inside(scale) / self.count).tolist()),
            self._intervals(scale),
        )

    def _mean_nll(self, likelihood: str, scale: np.ndarray) -> float:
        """The mean negative log-likelihood per value with sigma times ``scale`` (per band)."""
        log_sigma = self.sum_log_sigma + self.count * np.log(scale)
        if likelihood == "gnll":  # 0.5 log 2 pi + ln sigma + z^2 / 2
            terms = 0.5 * math.log(2 * math.pi) * self.count + log_sigma + 0.5 * self.sum_z2 / scale**2
        else:  # b = sigma / sqrt 2: ln 2b + |e| / b = ln(sqrt 2 sigma) + sqrt 2 |z|
            terms = 0.5 * math.log(2.0) * self.count + log_sigma + math.sqrt(2.0) * self.sum_abs_z / scale
        return float(terms.sum() / self.count.sum())

    def _intervals(self, scale: np.ndarray) -> Intervals:
        """For each share p of :data:`INTERVAL_LEVELS`, each band's smallest multiple of its calibrated sigma (sigma
        times its factor in ``scale``) within which the histogram places ceil(p (n + 1)) of its n values, every
        value counted at its bin's upper edge (so at most one bin, 0.5 %, above the exact score, never below it); a
        share that needs more values than a band has, or its last bin, is left out."""
        cumulative = np.cumsum(self.histogram[:, :-1], axis=1)  # up to each bin's upper edge; the last bin unknown
        intervals = []
        for level in INTERVAL_LEVELS:
            reached = cumulative >= np.ceil(level * (self.count + 1))[:, None]
            if not reached[:, -1].all():  # more values than a band has, or some in its last bin
                continue
            upper_edges = LOG_Z_EDGES[reached.argmax(axis=1) + 1]  # of the first bin where each band reaches it
            intervals.append((level, tuple(float(m) for m in np.exp(upper_edges) / scale)))
        return tuple(intervals)

    def held(self, multiples: Sequence[float]) -> np.ndarray:
        """Each band's share of its values with |z| <= its multiple in ``multiples`` (sigma as given; read from the
        histogram)."""
        return self._inside(np.asarray(multiples, np.float64)) / self.count

    def _inside(self, scale: np.ndarray) -> np.ndarray:
        """Per band, the values with |z| <= the band's factor, read from the histogram (linear within a bin)."""
        inside = np.zeros(NUM_S2_BANDS)
        for band in range(NUM_S2_BANDS):
            cumulative = np.concatenate(([0.0], np.cumsum(self.histogram[band])))
            inside[band] = np.interp(math.log(scale[band]), LOG_Z_EDGES, cumulative)
        return inside


def fit_sigma_scale(
    predictor: Predictor,
    triplets: Sequence[Triplet],
    likelihood: str,
    *,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit one factor per band to the sigma ``predictor`` gives on ``triplets`` (every value of every patch),
    by ``likelihood`` (``gnll`` or ``lnll``)."""
    statistics = scale_statistics(
        predictor, triplets, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    return statistics.fit(likelihood)


def scale_statistics(
    predictor: Predictor,
    triplets: Sequence[Triplet],
    *,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> ScaleStatistics:
    """The statistics of |error| / sigma that ``predictor`` gives on every value of every patch of ``triplets``."""
    if predictor.uncertainty != "diag":
        raise DSen2CRError(f"{predictor.weights or 'this model'}: {NO_SIGMA}")
    if not triplets:
        raise DSen2CRError("calibrate-sigma: no patches to fit the sigma scale on")
    dataset = SEN12MSCRDataset(list(triplets), train=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_by_size)
    statistics = ScaleStatistics()
    bar = tqdm(total=len(triplets), unit="patch", desc="calibrate-sigma", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for batch in itertools.chain.from_iterable(loader):
            s1 = batch["s1"].numpy() if predictor.include_sar else None
            mean, variance = predictor.predict_with_variance(batch["s2_cloudy"].numpy(), s1)
            for i in range(mean.shape[0]):
                sigma_dn = np.sqrt(variance[i].astype(np.float64)) * S2_MODEL_SCALE
                statistics.add(s2_model_to_dn(mean[i]), s2_model_to_dn(batch["s2"][i]), sigma_dn)
            bar.update(mean.shape[0])
    return statistics


def calibrate_weights(
    weights: str | Path,
    triplets: Sequence[Triplet],
    out: str | Path,
    *,
    data: str,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit the sigma scale of the model in ``weights`` on ``triplets`` (held-out patches; ``data`` names them
    in the record) and write the weights with it to ``out`` (safetensors; the model's weights unchanged)."""
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
        predictor, triplets, likelihood, batch_size=batch_size, num_workers=num_workers, progress=progress
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
    data: str,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
) -> SigmaFit:
    """Fit one factor per band to the sigma of the ensemble of ``weights`` (its members' files, or an ensemble file,
    whose factors the new ones multiply) on ``triplets``, the members run in IEEE fp32 (ONNX files as exported),
    and write an ensemble file of its members with them to ``out``
    (:func:`~dsen2cr.ensemble_file.write_ensemble_file`)."""
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
        predictor, triplets, likelihood, batch_size=batch_size, num_workers=num_workers, progress=progress
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
        f"({fit.values:,} values)",
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
