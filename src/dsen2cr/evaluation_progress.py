"""An evaluation's progress: each finished batch's rows and calibration sample, appended to the report folder's
``progress/`` as soon as the batch is scored, so that an evaluation stopped on the way (Ctrl-C, a scheduler's
time limit, a broken patch, SIGKILL) goes on with ``evaluate --resume`` from the patches it scored and ends with
the report an uninterrupted run writes.

``progress/batches.jsonl`` starts with a line that says what is evaluated (the patches, protocol, window, mask,
threshold, images, and what computes the predictions: weights' SHA-256, model, precision, backend, version);
then one line per batch: its rows, the lengths of its patches' calibration samples (``samples.f64``: each
sample's |errors| then its sigmas, float64) and the sampler's state after it. Lines are appended, never
rewritten: a line cut short by a kill is dropped when read, with the samples written for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.appended import complete_lines, keep_lines, read_record, start_record
from dsen2cr.outputs.locks import remove_leftovers_in

log = logging.getLogger(__name__)

#: The entry of the report folder that holds the progress while the evaluation runs.
PROGRESS = "progress"
#: The report's folders of images: each scored patch's prediction (``PATCH.tif``) and previews, which a stopped
#: evaluation keeps with its progress and a resumed one goes on with.
PREDICTIONS, PREVIEWS = "predictions", "previews"
PROGRESS_LINES = "batches.jsonl"
_SAMPLES = "samples.f64"
_FORMAT = "dsen2cr evaluation progress 1"
#: What a batch's line holds (:meth:`EvaluationProgress.add`).
_BATCH_KEYS = ("rows", "samples", "sampler")

#: The predictions' tags that a resumed evaluation must share with the stopped one: what computed them (the
#: weights' path may differ, their SHA-256 not; the first batch's check is measured again by every run).
COMPARED_TAGS = (
    "DSEN2CR_WEIGHTS_SHA256",
    "DSEN2CR_MODEL",
    "DSEN2CR_PRECISION",
    "DSEN2CR_BACKEND",
    "DSEN2CR_LIKELIHOOD",
    "DSEN2CR_VERSION",
)

Sample = tuple[np.ndarray, np.ndarray]


def evaluation_identity(patch_ids: Sequence[str], settings: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """What an evaluation is, as its progress records it: the ordered patches (their count and a SHA-256 of their
    ids), the scoring ``settings`` (protocol, window, …) and the ``COMPARED_TAGS`` of ``tags``."""
    digest = hashlib.sha256("\n".join(patch_ids).encode()).hexdigest()
    compared = {key: tags[key] for key in COMPARED_TAGS if key in tags}
    return {"patches": len(patch_ids), "patches_sha256": digest, **settings, "tags": compared}


@dataclass
class Scored:
    """What the stopped run scored: the rows of its patches (model and identity), their calibration samples,
    and the sampler's state after the last of them (None: nothing scored)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    sampler: dict[str, Any] | None = None

    @property
    def patch_ids(self) -> set[str]:
        """The patches scored."""
        return {row["patch_id"] for row in self.rows}


class EvaluationProgress:
    """The progress of one evaluation in ``out/progress`` (see the module's docstring)."""

    def __init__(self, out: Path) -> None:
        self.folder = out / PROGRESS
        self.batches = 0  # lines of batches in the file
        self.recorded_arithmetic: str | None = None  # what computed a stopped run's batches (None: not recorded)

    @classmethod
    def start(cls, out: Path, identity: dict[str, Any]) -> EvaluationProgress:
        """A new, empty progress in ``out`` (an earlier one there is replaced)."""
        progress = cls(out)
        shutil.rmtree(progress.folder, ignore_errors=True)
        progress.folder.mkdir(parents=True)
        (progress.folder / _SAMPLES).touch()
        start_record(progress.folder / PROGRESS_LINES, _FORMAT, identity)
        return progress

    @classmethod
    def resume(cls, out: Path, identity: dict[str, Any]) -> tuple[EvaluationProgress, Scored]:
        """The progress a stopped run left in ``out``, checked to be of the evaluation ``identity`` describes,
        and what it scored (a line cut short by a kill, and the samples written for it, are dropped)."""
        progress = cls(out)
        lines_path, samples_path = progress.folder / PROGRESS_LINES, progress.folder / _SAMPLES
        recorded, lines = read_progress(out)
        _check_same_evaluation(lines_path.parent.parent, recorded, identity)
        scored = Scored()
        end = 0  # of the samples that complete lines describe
        with open(samples_path, "rb") as samples:
            for batch in complete_lines(lines, _BATCH_KEYS):  # a line cut short by a kill, and what follows, dropped
                lengths = batch["samples"]
                values = np.fromfile(samples, dtype="<f8", count=2 * sum(lengths))
                if values.size != 2 * sum(lengths):
                    break  # its samples were cut short: the batch is scored again
                scored.rows.extend(batch["rows"])
                scored.sampler = batch["sampler"]
                progress.recorded_arithmetic = batch.get("arithmetic")  # (a version before it recorded none)
                for length in lengths:
                    scored.samples.append((values[:length], values[length : 2 * length]))
                    values = values[2 * length :]
                end += 16 * sum(lengths)
                progress.batches += 1
        keep_lines(lines_path, lines, progress.batches)  # without a line cut short: appends go on after it
        os.truncate(samples_path, end)
        return progress, scored

    def add(
        self, rows: list[dict[str, Any]], samples: list[Sample], sampler: Mapping[str, Any], arithmetic: str
    ) -> None:
        """Record one scored batch: its ``rows``, its patches' calibration ``samples`` (|error|, sigma), the
        sampler's state after them and the ``arithmetic`` that computed it (its ``DSEN2CR_ARITHMETIC``); the
        samples first, so that a complete line always has its samples. A write that fails (a full disk) is one
        line naming the file; what was recorded before stays. The first batch of a resumed run is checked to be
        computed as the recorded ones were."""
        recorded, self.recorded_arithmetic = self.recorded_arithmetic, None  # checked once, at this run's first
        if recorded is not None and arithmetic != recorded:
            raise DSen2CRError(
                f"{self.folder.parent}: the stopped evaluation's patches were computed in {recorded}, this "
                f"run's in {arithmetic} (another version, or a machine that computes that precision otherwise); its "
                "report would mix them: --overwrite to start again"
            )
        path = self.folder / _SAMPLES
        try:
            with open(path, "ab") as file:
                for error, sigma in samples:
                    file.write(np.asarray(error, dtype="<f8").tobytes())
                    file.write(np.asarray(sigma, dtype="<f8").tobytes())
            line = {"rows": rows, "samples": [len(error) for error, _ in samples], "sampler": sampler}
            line["arithmetic"] = arithmetic
            path = self.folder / PROGRESS_LINES
            with open(path, "a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
        except OSError as error:
            reason = error.strerror or str(error)
            raise DSen2CRError(
                f"{path}: cannot record a scored batch ({reason}); the batches recorded before it stay for --resume"
            ) from error
        self.batches += 1

    def remove(self) -> None:
        """Remove the progress (the report is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _check_same_evaluation(out: Path, recorded: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to go on from a stopped run of another evaluation, naming the first thing that differs."""
    if identity["tags"].get("DSEN2CR_WEIGHTS_SHA256", "unknown") == "unknown":
        raise DSen2CRError(
            f"{out}: the weights' SHA-256 is unknown (a model in memory), so nothing tells they scored the stopped "
            "evaluation; --overwrite starts it again"
        )
    recorded_tags, tags = recorded.get("tags", {}), identity["tags"]
    for key in COMPARED_TAGS:  # the weights first
        if recorded_tags.get(key) != tags.get(key):
            _refuse(out, f"{key} {recorded_tags.get(key, 'none')}", tags.get(key, "none"))
    if (recorded.get("patches"), recorded.get("patches_sha256")) != (identity["patches"], identity["patches_sha256"]):
        raise DSen2CRError(
            f"{out}: the stopped evaluation there scored a list of {recorded.get('patches')} patches, this run's is "
            f"another of {identity['patches']}; give its patches to go on from it, or --overwrite to start again"
        )
    for key in sorted(set(recorded) | set(identity)):
        if key not in ("tags", "patches", "patches_sha256") and recorded.get(key) != identity.get(key):
            _refuse(out, f"{key} {recorded.get(key)}", f"{identity.get(key)}")


def _refuse(out: Path, recorded: str, now: str) -> None:
    """The error of a stopped evaluation that is not this one."""
    raise DSen2CRError(
        f"{out}: the stopped evaluation there scored {recorded}, this run's is {now}; give its settings to go on "
        "from it, or --overwrite to start again"
    )


def open_progress(
    out: Path, identity: dict[str, Any], *, resume: bool, images: bool
) -> tuple[EvaluationProgress, Scored]:
    """The progress of the evaluation ``identity`` describes in ``out``: with ``resume`` the one a stopped run
    left there, if any, and what it scored (said in a line), checked to have the ``images`` of every patch it
    scored (``predictions/PATCH.tif``; what a killed run was writing there is removed); else (or with none
    there) a new one."""
    if not (resume and (out / PROGRESS).is_dir()):
        return EvaluationProgress.start(out, identity), Scored()
    progress, scored = EvaluationProgress.resume(out, identity)
    patches = sorted(scored.patch_ids)
    if images and patches:
        for folder in [out / PREDICTIONS, out / PREVIEWS, *(out / PREVIEWS / patch_id for patch_id in patches)]:
            remove_leftovers_in(folder)
        missing = next((p for p in patches if not (out / PREDICTIONS / f"{p}.tif").is_file()), None)
        if missing is not None:
            raise DSen2CRError(
                f"{out / PREDICTIONS / missing}.tif: missing, though the stopped evaluation scored {missing}; "
                "--overwrite starts the evaluation again"
            )
    log.info("%s: going on from the %d of %d patches a stopped run scored", out, len(patches), identity["patches"])
    return progress, scored


def read_progress(out: Path) -> tuple[dict[str, Any], list[str]]:
    """The identity and the batches' lines of the progress in ``out``; one that cannot be read (or of another
    version's format) is refused in one line naming it."""
    path = out / PROGRESS / PROGRESS_LINES
    return read_record(
        path, _FORMAT, what="the progress of an evaluation", again="--overwrite starts the evaluation again"
    )


def scored_patches(out: Path) -> tuple[int, int] | None:
    """How many patches the progress in ``out`` holds scored, and of how many; None where there is none."""
    try:
        identity, lines = read_record(out / PROGRESS / PROGRESS_LINES, _FORMAT, what="", again="")
        total = int(identity["patches"])
    except (DSen2CRError, KeyError, TypeError, ValueError):
        return None
    done: set[str] = set()
    for batch in complete_lines(lines, _BATCH_KEYS):
        done.update(row["patch_id"] for row in batch["rows"])
    return len(done), total


def keep_progress(out: Path, scored_before: int = 0) -> tuple[str, ...]:
    """The entries of a failed evaluation's folder to keep for ``--resume`` (its progress and image folders) when
    it scored a patch, saying so in a warning where this run scored more than the ``scored_before`` it went on
    from; else none."""
    counts = scored_patches(out)
    if counts is None or counts[0] == 0:
        return ()
    if counts[0] <= scored_before:  # nothing new: the stopped run's progress stays as it was
        return (PROGRESS, PREDICTIONS, PREVIEWS)
    log.warning(
        "%s: the %d of %d patches scored are kept: run the command again with --resume to go on from them "
        "(--overwrite starts again)",
        out,
        *counts,
    )
    return (PROGRESS, PREDICTIONS, PREVIEWS)
