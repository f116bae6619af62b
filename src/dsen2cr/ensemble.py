"""Ensembles (docs/design.md §6): several trained models run as one predictor. The prediction is the mean of
the members'; its variance is the law of total variance over the members, aleatoric (the mean of the
members' predicted variances; 0 for members without a variance output) plus epistemic (the variance of their
predictions, how much independently trained models disagree), per band and pixel. Every member runs with its
own backend and checks; the ensemble is a :class:`~dsen2cr.predictor.Predictor` like any other. An ensemble file
(:mod:`dsen2cr.ensemble_file`) adds one factor per band for its sigma, fitted after training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsen2cr.backends import ComputedBy
from dsen2cr.ensemble_file import EnsembleFile, split_weights
from dsen2cr.errors import DSen2CRError
from dsen2cr.models import ModelSpec
from dsen2cr.predictor import Predictor, load_predictor, recorded_sha256
from dsen2cr.sigma_record import recorded_intervals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleSpec:
    """The configuration an ensemble shows to the planner: the members' largest receptive radius and widest
    feature map (each member runs the windows in turn), their common SAR input, always a variance."""

    members: tuple[ModelSpec, ...]

    @property
    def include_sar(self) -> bool:
        """Whether the members take S1 (all do, or none)."""
        return self.members[0].include_sar

    @property
    def receptive_radius(self) -> int:
        """The largest member's."""
        return max(member.receptive_radius for member in self.members)

    @property
    def hidden_channels(self) -> int:
        """The widest member's."""
        return max(member.hidden_channels for member in self.members)

    @property
    def uncertainty(self) -> str:
        """An ensemble always gives a variance (at least the members' disagreement)."""
        return "diag"

    def build_parameter_count(self) -> int:
        """The members' parameters together."""
        return sum(member.build_parameter_count() for member in self.members)

    def build(self) -> Any:
        """Not a network: members are built from their own weights."""
        raise DSen2CRError("an ensemble is not one network; load each member's weights")

    def to_dict(self) -> dict[str, Any]:
        """The members' configurations."""
        return {"ensemble": [member.to_dict() for member in self.members]}

    def describe(self) -> str:
        """``ensemble of 3 (B=4, F=32 with SAR, …)``."""
        kinds = sorted({member.describe() for member in self.members})
        return f"ensemble of {len(self.members)} ({'; '.join(kinds)})"


class EnsembleBackend:
    """Runs the members in turn on each batch (each through its own backend, checks and float32 arithmetic);
    ``sigma_scale``: one factor per band for the combined sigma (an ensemble file's; None: as combined)."""

    backend = "ensemble"

    def __init__(self, members: list[Predictor], sigma_scale: Sequence[float] | None = None) -> None:
        self.members = members
        self.uncertainty = "diag"
        squared = None if sigma_scale is None else np.square(np.asarray(sigma_scale, np.float64))
        self._variance_scale = None if squared is None else squared[:, None, None]  # per band, on (N, 13, H, W)
        self._variance_told = False  # whether a mixed ensemble has said what its aleatoric part holds

    @property
    def precision(self) -> str:
        """The members' precisions (one word when they agree)."""
        return self.computed_by().precision

    @property
    def check_dn(self) -> tuple[float, float] | None:
        """The largest first-batch distance to IEEE fp32 over the members (None if a member was not checked)."""
        return self.computed_by().check

    def computed_by(self, *, with_variance: bool = False) -> ComputedBy:
        """``ensemble``, the members' precisions and arithmetics (one each when they agree) and their largest
        first-batch distance to IEEE fp32 (None if a member was not checked), as the members ran:
        ``with_variance``, as :meth:`predict_with_variance` runs them (those with a variance tail eagerly, the
        others through their checked backends)."""
        runs = [
            member.computed_by(with_variance=with_variance and member.uncertainty == "diag") for member in self.members
        ]
        precision = "/".join(dict.fromkeys(run.precision for run in runs))
        arithmetic = " / ".join(dict.fromkeys(run.arithmetic for run in runs))
        checks = [run.check for run in runs]
        if any(check is None for check in checks):
            return ComputedBy(self.backend, precision, None, arithmetic)
        worst = (max(c[0] for c in checks if c), max(c[1] for c in checks if c))
        return ComputedBy(self.backend, precision, worst, arithmetic)

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """The mean of the members' predictions."""
        total = np.zeros_like(s2, dtype=np.float64)
        for member in self.members:
            total += member(s2, s1)
        return (total / len(self.members)).astype(np.float32)

    def predict_with_variance(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The mean prediction and the total variance (aleatoric + epistemic), float32; members without a
        variance tail add 0 to the aleatoric part (said once, as a warning, when others have one)."""
        mean, aleatoric, epistemic = self._moments(s2, s1)
        return mean.astype(np.float32), (aleatoric + epistemic).astype(np.float32)

    def predict_variance_parts(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """The mean prediction, the aleatoric variance (the mean of the members' predicted variances) and the
        epistemic variance (the variance of their predictions), float32; their sum is
        :meth:`predict_with_variance`'s."""
        return tuple(moment.astype(np.float32) for moment in self._moments(s2, s1))

    def _moments(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mean of the members' predictions, the mean of their variances and the variance of their
        predictions, float64."""
        if not self._variance_told:
            self._warn_of_members_without_variance()
        means, variances = [], []
        for member in self.members:
            if member.uncertainty == "diag":
                mean, variance = member.predict_with_variance(s2, s1)
            else:
                mean, variance = member(s2, s1), np.zeros_like(s2, dtype=np.float32)
            means.append(mean.astype(np.float64))
            variances.append(variance.astype(np.float64))
        stacked = np.stack(means)
        aleatoric, epistemic = np.mean(variances, axis=0), stacked.var(axis=0)
        if self._variance_scale is not None:  # both parts alike: total^2 = aleatoric^2 + epistemic^2 still
            aleatoric, epistemic = aleatoric * self._variance_scale, epistemic * self._variance_scale
        return stacked.mean(axis=0), aleatoric, epistemic

    def _warn_of_members_without_variance(self) -> None:
        """Warn when some members predict a variance and others do not: the aleatoric part, the mean of all the
        members' variances, counts the others' as 0 and so understates the noise."""
        self._variance_told = True
        without = [member.weights or "a model in memory" for member in self.members if member.uncertainty != "diag"]
        if without and len(without) < len(self.members):
            log.warning(
                "%s: %s no variance; the ensemble's sigma counts %s aleatoric part as 0 (the mean of %d "
                "members' variances, %d predicted), which understates it; members trained with "
                "model.uncertainty=diag give their own",
                ", ".join(without),
                "predicts" if len(without) == 1 else "predict",
                "its" if len(without) == 1 else "their",
                len(self.members),
                len(self.members) - len(without),
            )


def ensemble(members: list[Predictor], calibration: EnsembleFile | None = None, *, fitting: bool = False) -> Predictor:
    """One predictor of ``members`` (at least two, all with or all without SAR, on one device); with
    ``calibration``, the ensemble file they were read from, its sigma times the file's factors (outputs record
    the file's SHA-256 after the members'). Members calibrated one by one without it are warned of
    (:func:`_warn_of_members_calibrated_alone`), except while calibrate-sigma is ``fitting`` the ensemble's factors."""
    if len(members) < 2:
        raise DSen2CRError(f"an ensemble needs at least two members, got {len(members)}")
    if not fitting:
        _warn_of_members_calibrated_alone(members, calibration)
    names = [member.weights or "a model in memory" for member in members]
    check_same_inputs(names, [member.include_sar for member in members])
    models = [getattr(member.predict, "model", member.predict) for member in members]  # a PyTorch backend's model
    check_distinct_members(names, models, [member.weights_sha256 for member in members])
    spec = EnsembleSpec(tuple(member.config for member in members))
    files, digests = list(names), [member.weights_sha256 for member in members]
    if calibration is not None:
        files, digests = [*files, str(calibration.path)], [*digests, calibration.sha256]
    trained = [member.likelihood or "unknown" for member in members if member.uncertainty == "diag"]  # their sigma
    likelihood = "/".join(dict.fromkeys(trained)) or None
    calibrated = [f"{n}: {m.sigma_calibration}" for n, m in zip(names, members, strict=True) if m.sigma_calibration]
    if calibration is not None:
        calibrated.insert(0, calibration.calibration)  # then the members' own, which scale their sigma first
    backend = EnsembleBackend(members, None if calibration is None else calibration.scale)
    described = ("; ".join(files), recorded_sha256(digests), likelihood, "; ".join(calibrated) or None)
    intervals = () if calibration is None else recorded_intervals(calibration.sigma_scale)  # the members' are not its
    return Predictor(backend, spec, members[0].device, members[0].float32, *described, intervals)


def _warn_of_members_calibrated_alone(members: Sequence[Predictor], calibration: EnsembleFile | None) -> None:
    """Warn when an ensemble's members had their sigma calibrated one by one and the ensemble was not (no
    ``calibration``): their disagreement adds to that sigma, so the ensemble's is wider than calibrated."""
    alone = [member.weights or "a model in memory" for member in members if member.sigma_calibration]
    if alone and calibration is None:
        log.warning(
            "%s: sigma calibrated one by one; the ensemble adds the members' disagreement to it, so its sigma is "
            "wider than calibrated: calibrate the ensemble as a whole (dsen2cr weights calibrate-sigma --weights %s "
            "--out ensemble.json, then --weights ensemble.json)",
            ", ".join(alone),
            " ".join(member.weights or "MEMBER" for member in members),
        )


def load_ensemble(weights: str | Path | Sequence[str | Path], **options: Any) -> Predictor:
    """One predictor of the weights files ``weights`` (at least two; ``--weights A B C`` on the command line) or
    of an ensemble file (``ensemble.json``, its sigma calibrated), each member loaded by
    :func:`~dsen2cr.predictor.load_predictor` with ``options`` (``device``, ``backend``, ``precision``, ...)."""
    files, calibration = split_weights([weights] if isinstance(weights, str | Path) else weights)
    return ensemble([load_predictor(path, **options) for path in files], calibration)


def check_same_inputs(names: list[str], include_sar: list[bool]) -> None:
    """Refuse members of which some take SAR input and others do not (naming one of each)."""
    if len(set(include_sar)) > 1:
        with_sar = next(name for name, sar in zip(names, include_sar, strict=True) if sar)
        without = next(name for name, sar in zip(names, include_sar, strict=True) if not sar)
        raise DSen2CRError(
            f"{with_sar}: takes SAR input but {without} does not; an ensemble's members take the same inputs"
        )


def check_distinct_members(names: Sequence[str], networks: Sequence[object], digests: Sequence[str | None]) -> None:
    """Refuse two members that are one network: one file twice, a byte copy (equal SHA-256 in ``digests``) or the
    same weights in two files (a checkpoint and its export: equal tensors of the PyTorch models in ``networks``).
    Copies never disagree, so an ensemble of them would give its members' spread, σ, as 0 everywhere."""
    for later in range(1, len(names)):
        for earlier in range(later):
            same_file = digests[later] is not None and digests[later] == digests[earlier]
            if same_file or _equal_weights(networks[earlier], networks[later]):
                why = "equal SHA-256" if same_file else "equal weights"
                why = "named twice" if names[later] == names[earlier] else why
                raise DSen2CRError(
                    f"{names[later]}: the same network as {names[earlier]} ({why}); an ensemble's members are models "
                    "trained apart (another trainer.seed, say): copies never disagree, so its σ would be 0"
                )


def _equal_weights(first: object, second: object) -> bool:
    """Whether two PyTorch models hold equal tensors under equal names (False for anything else)."""
    if not isinstance(first, torch.nn.Module) or not isinstance(second, torch.nn.Module):
        return False
    mine, theirs = first.state_dict(), second.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[name].shape == theirs[name].shape and torch.equal(mine[name], theirs[name]) for name in mine
    )
