"""The statistics of a sigma calibration (``dsen2cr weights calibrate-sigma``, :mod:`dsen2cr.sigma_calibration`):
per band, in float64, the sums and the histogram of z = |error| / sigma over the held-out values, the factors
fitted from them and the intervals they hold.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsen2cr.calibration import INTERVAL_LEVELS, Intervals, reflectance_errors
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.errors import DSen2CRError
from dsen2cr.preprocessing import NUM_S2_BANDS, S2_BANDS

#: The edges of the bins of ln|z| that the coverage before and after scaling is read from (|z| from 8e-7 to
#: 3000; 0.005 wide: coverage within about 0.1 % of the exact count; smaller |z|, exact zeros included, in the
#: first bin, larger in the last).
LOG_Z_EDGES = np.linspace(-14.0, 8.0, 4401)

#: Which values a fit takes: every value of the patches, or only those under cloud and shadow (each patch's paper
#: mask, at the threshold its dataset is read with: calibrate-sigma --cloud-threshold, 0.2 by default), where
#: remove-clouds --keep-clear uses the prediction and sigma.
REGIONS = ("all", "cloudy")


@dataclass(frozen=True)
class HeldOutData:
    """The held-out patches a sigma scale is fitted on, as its record names them: ``name`` (``files.csv, split
    val``), and how many of them lie in ROIs training patches come from (``beside_training``: its factors may be
    too small elsewhere)."""

    name: str
    beside_training: int = 0


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
    #: The values fitted on (:data:`REGIONS`).
    region: str = "all"
    #: The paper mask's threshold that made the region ``cloudy`` (each patch's mask, as evaluate's).
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD

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

    def record(self, data: str | HeldOutData) -> dict[str, object]:
        """What a weights file keeps (:data:`~dsen2cr.weights.SIGMA_SCALE_KEY`): the factors
        (:attr:`total_scale`), the likelihood, the data they were fitted on (``data``, by name; where some of its
        patches lie in ROIs training patches come from, ``patches_on_training_ground``), how many values (and
        which: ``region``, where not all, with its ``cloud_threshold``), and the intervals measured there
        (``intervals``: share of the values -> each band's multiple of sigma)."""
        held = data if isinstance(data, HeldOutData) else HeldOutData(data)
        fitted = {"likelihood": self.likelihood, "data": held.name, "patches": self.patches, "values": self.values}
        fitted |= {"patches_on_training_ground": held.beside_training} if held.beside_training else {}
        fitted |= {"region": self.region, "cloud_threshold": self.cloud_threshold} if self.region != "all" else {}
        intervals = {"intervals": {f"{level:g}": list(multiples) for level, multiples in self.intervals}}
        return {"scale": self.total_scale} | fitted | (intervals if self.intervals else {})


class ScaleStatistics:
    """Per band, in float64: the count of values, the sums of z^2, |z| and ln sigma (reflectance), and a
    histogram of ln|z| (:data:`LOG_Z_EDGES`)."""

    def __init__(self, region: str = "all") -> None:
        if region not in REGIONS:
            raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")
        self.region = region  # which values :meth:`add` takes
        self.count = np.zeros(NUM_S2_BANDS)
        self.sum_z2 = np.zeros(NUM_S2_BANDS)
        self.sum_abs_z = np.zeros(NUM_S2_BANDS)
        self.sum_log_sigma = np.zeros(NUM_S2_BANDS)
        self.histogram = np.zeros((NUM_S2_BANDS, LOG_Z_EDGES.size - 1))
        self.patches = 0

    def add(
        self, pred_dn: np.ndarray, target_dn: np.ndarray, sigma_dn: np.ndarray, mask: np.ndarray | None = None
    ) -> None:
        """One patch: prediction and target (13, H, W) DN, sigma (13, H, W) DN; for the region ``cloudy``, only the
        pixels where its cloud/shadow ``mask`` (H, W) is non-zero (a patch without any adds nothing)."""
        if self.region == "cloudy":
            if mask is None:
                raise ValueError("the cloudy region needs each patch's cloud/shadow mask")
            cloud = np.asarray(mask) != 0
            if not cloud.any():
                return
            pred_dn, target_dn, sigma_dn = (np.asarray(a)[:, cloud] for a in (pred_dn, target_dn, sigma_dn))
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
            where = "no patches" if self.region == "all" else "no pixel of the patches lies under cloud or shadow"
            raise DSen2CRError(f"calibrate-sigma: no values to fit the sigma scale on ({where})")
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
            region=self.region,
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
