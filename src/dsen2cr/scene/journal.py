"""A scene's journal: each batch of windows the network predicted, kept beside the output while the scene runs, so
that a scene stopped on the way (Ctrl-C, a scheduler's time limit, a broken block of the input, SIGKILL) goes on
with ``remove-clouds --resume`` from the windows it predicted instead of starting again: on a CPU a full tile with
the paper's model takes hours, nearly all of them the network's (docs/design.md §4.4).

``.NAME.journal/`` beside the image ``NAME``: ``windows.jsonl`` starts with a line that says what is predicted (the
scene's inputs with their sizes and modification times, the area, tiles, overlap and batch, the weights' SHA-256,
model, precision, backends, device and version); then one line per batch: its windows and the shapes of the
predicted cores it appended to ``predictions.f32`` (float32, as the network gave them). ``provenance.json`` holds
what computed the first batch the network ran (the outputs' ``DSEN2CR_*`` tags, its check included). Lines are
appended, never rewritten: a line cut short by a kill is dropped when read, with the predictions written for it.
Only the network's output is kept: the outputs are made again from it, bit for bit those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from dsen2cr.auto import resolve_journal
from dsen2cr.errors import DSen2CRError, HalfPrecisionOverflowError
from dsen2cr.inputs import S2Product, is_stac, local_inputs, s1_parts
from dsen2cr.inputs.stac import item_digest, item_reference
from dsen2cr.outputs.appended import complete_lines, keep_lines, read_record, start_record
from dsen2cr.outputs.files import describe_bytes, write_text_atomic
from dsen2cr.predictor import Predictor
from dsen2cr.preprocessing import NUM_S2_BANDS
from dsen2cr.settings import SceneJob, ScenePlan

log = logging.getLogger(__name__)

_FORMAT = "dsen2cr scene journal 1"
_LINES, _PREDICTIONS, _PROVENANCE = "windows.jsonl", "predictions.f32", "provenance.json"
#: What a batch's line holds (:meth:`SceneJournal.record`).
_BATCH_KEYS = ("batch", "windows", "shapes")
#: The tag of the arithmetic, in words, that computed the predictions (:meth:`dsen2cr.predictor.Predictor.provenance`).
ARITHMETIC_TAG = "DSEN2CR_ARITHMETIC"
#: The tags of what computed the predictions that a resumed scene must share with the stopped run's.
COMPUTED_BY = ("DSEN2CR_PRECISION", "DSEN2CR_BACKEND", "DSEN2CR_DEVICE", ARITHMETIC_TAG)
#: The tags of what computed the predictions and of the first batch's check, which a resumed scene's outputs take
#: from the stopped run (the weights' path and the rest are this run's).
_CHECKED = (*COMPUTED_BY, "DSEN2CR_CHECK_P99_DN", "DSEN2CR_CHECK_MAX_DN")
#: The tag a resumed scene's outputs carry: how many of its windows a stopped run predicted.
RESUMED_TAG = "DSEN2CR_RESUMED_WINDOWS"


def scene_identity(
    tags: dict[str, str],
    precision: str,
    job: SceneJob,
    plan: ScenePlan,
    area: Window,
    files: Sequence[Path],
    *,
    windows: int,
    channels: int,
) -> dict[str, Any]:
    """What a scene run's predictions are, as its journal records them: what computes them (``tags``: the
    predictor's weights SHA-256, model and version; its ``precision``, the plan's backends and device), the inputs
    (as given, and each local file's size and modification time: ``files``), the ``area`` of the scene, the
    plan's tiles, overlap and batch, the reading settings that change what the network sees, and the number of
    ``windows`` and of ``channels`` predicted per pixel."""
    stats = [(path, path.stat()) for path in files if path.is_file()]
    settings = plan.settings
    return {
        "weights_sha256": tags.get("DSEN2CR_WEIGHTS_SHA256"),
        "model": tags.get("DSEN2CR_MODEL"),
        "version": tags.get("DSEN2CR_VERSION"),
        "precision": precision,
        "backends": list(plan.backends),
        "device": plan.device.type,
        "s2": job.s2,
        "s1": job.s1,
        "files": [[str(path), stat.st_size, stat.st_mtime_ns] for path, stat in stats],
        "area": [int(area.col_off), int(area.row_off), int(area.width), int(area.height)],
        "tile": plan.tile,
        "overlap": plan.overlap,
        "batch_size": plan.batch_size,
        "s2_offset": settings.s2_offset,
        "resampling": settings.resampling,
        "s1_linear": settings.s1_linear,
        "windows": windows,
        "channels": channels,
    }


def journal_path(out: Path) -> Path:
    """The journal folder of the scene whose image is ``out`` (hidden, beside it)."""
    return out.with_name(f".{out.name}.journal")


def journal_windows(out: Path) -> tuple[int, int] | None:
    """How many windows the journal of ``out`` holds predicted, and of how many; None where there is none (or one
    that cannot be read: the run that opens it says why)."""
    try:
        identity, lines = read_record(journal_path(out) / _LINES, _FORMAT, what="", again="")
        total = int(identity["windows"])
    except (DSen2CRError, KeyError, TypeError, ValueError):
        return None
    return sum(batch["windows"] for batch in complete_lines(lines, _BATCH_KEYS)), total


def check_no_journal(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a scene that a stopped run left a journal of, unless ``resume`` (go on from it, also with
    ``overwrite``: then the outputs there are replaced) or ``overwrite`` alone (start again), naming how much it
    holds; and, whatever the options, a file or link of another's where the
    journal goes (never replaced)."""
    path = journal_path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a link" if path.is_symlink() else "a file"
        raise DSen2CRError(f"{path}: is not a journal folder ({kind}); move it away, or choose another output")
    if resume or overwrite or not path.exists():
        return
    counts = journal_windows(out)
    held = f"predicted {counts[0]} of its {counts[1]} windows" if counts else "left a journal"
    raise DSen2CRError(
        f"{out}: a stopped run of this scene {held} (kept in {journal_path(out).name}): --resume goes on from them, "
        "--overwrite starts the scene again"
    )


class SceneJournal:
    """The journal of one scene run (see the module's docstring): :meth:`cores` gives a batch a stopped run
    predicted, :meth:`record` keeps one this run predicted; used as an exit callback of the scene's outputs, it is
    removed once they are in place and kept (said in a warning) when the scene fails."""

    def __init__(self, out: Path, identity: dict[str, Any], provenance: Callable[[], dict[str, str]]) -> None:
        self.out, self.folder = out, journal_path(out)
        self.identity, self._provenance = identity, provenance
        self.batches: list[tuple[int, int, list[tuple[int, ...]]]] = []  # windows, offset, shapes of each batch
        self.recorded_provenance: dict[str, str] | None = None
        self.replayed = 0  # windows given back from the journal
        self._computed_here = False  # whether the network ran on a batch in this run

    @classmethod
    def open(
        cls, out: Path, identity: dict[str, Any], provenance: Callable[[], dict[str, str]], *, resume: bool
    ) -> SceneJournal:
        """The journal of ``out``: with ``resume`` the one a stopped run left, checked to be of the scene
        ``identity`` describes (said in a line), else (or with none there) a new one, an earlier one replaced."""
        journal = cls(out, identity, provenance)
        if resume and journal.folder.is_dir():
            journal._resume()
            return journal
        shutil.rmtree(journal.folder, ignore_errors=True)
        journal.folder.mkdir()
        (journal.folder / _PREDICTIONS).touch()
        start_record(journal.folder / _LINES, _FORMAT, identity)
        return journal

    def _resume(self) -> None:
        """Read the stopped run's batches (a line cut short, and what follows it, dropped) after checking that it
        predicted this scene as this run would."""
        lines_path, again = self.folder / _LINES, "--overwrite starts the scene again"
        recorded, lines = read_record(lines_path, _FORMAT, what="a scene's journal", again=again)
        provenance_path = self.folder / _PROVENANCE
        try:
            if provenance_path.exists():
                self.recorded_provenance = dict(json.loads(provenance_path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
            raise DSen2CRError(f"{provenance_path}: cannot be read ({error}); {again}") from None
        predictions = self.folder / _PREDICTIONS
        if not predictions.is_file():
            raise DSen2CRError(f"{predictions}: missing; {again}")
        self._check_same_scene(recorded)
        size, offset = predictions.stat().st_size, 0
        for batch in complete_lines(lines, _BATCH_KEYS):  # a line cut short by a kill, and what follows, dropped
            shapes = [tuple(shape) for shape in batch["shapes"]]
            end = offset + 4 * sum(int(np.prod(shape)) for shape in shapes)
            if end > size:
                break  # its predictions were cut short: the batch is predicted again
            self.batches.append((batch["windows"], offset, shapes))
            offset = end
        if self.recorded_provenance is None and any(shapes for _, _, shapes in self.batches):
            raise DSen2CRError(f"{self.folder / _PROVENANCE}: missing; {again}")  # written before a run batch's line
        keep_lines(lines_path, lines, len(self.batches))  # appends go on after the last complete line
        os.truncate(predictions, offset)
        done = sum(windows for windows, _, _ in self.batches)
        log.info("%s: going on from the %d of %d windows a stopped run predicted", self.out, done, recorded["windows"])

    def _check_same_scene(self, recorded: dict[str, Any]) -> None:
        """Refuse a journal of another scene or run, naming the first thing that differs."""
        then = {entry[0]: entry for entry in recorded.get("files") or []}
        changed = next((entry[0] for entry in self.identity["files"] if then.get(entry[0], entry) != entry), None)
        if changed is not None:
            raise DSen2CRError(
                f"{self.out}: {changed} changed (size or modification time) since the stopped run predicted "
                "windows from it; --overwrite starts the scene again"
            )
        then_items = recorded.get("items") or {}
        changed = next(
            (name for name, digest in self.identity.get("items", {}).items() if then_items.get(name) != digest), None
        )
        if changed is not None:
            raise DSen2CRError(
                f"{self.out}: the STAC item {changed} changed (beyond its assets' signatures) since the stopped run "
                "predicted windows from it; --overwrite starts the scene again"
            )
        for key in [*self.identity, *(key for key in recorded if key not in self.identity)]:  # weights, inputs first
            if recorded.get(key) != self.identity.get(key):
                raise DSen2CRError(
                    f"{self.out}: the stopped run's windows were predicted with {key} {_shown(recorded.get(key))}, "
                    f"this run's is {_shown(self.identity.get(key))}; give its settings and inputs to go on from "
                    "them, or --overwrite to start the scene again"
                )

    @property
    def total_bytes(self) -> int:
        """At most what the journal holds once every window is predicted: 4 bytes a channel and pixel of the area."""
        _, _, width, height = self.identity["area"]
        return 4 * width * height * self.identity["channels"]

    def bytes_to_come(self) -> int:
        """At most what the journal will still write: :attr:`total_bytes` less what it holds."""
        return max(0, self.total_bytes - (self.folder / _PREDICTIONS).stat().st_size)

    def cores(self, index: int) -> list[np.ndarray] | None:
        """The predicted cores of batch ``index`` (of its windows that were run) as the stopped run kept them,
        or None where it did not get that far."""
        if index >= len(self.batches):
            return None
        windows, offset, shapes = self.batches[index]
        cores = []
        with open(self.folder / _PREDICTIONS, "rb") as data:
            data.seek(offset)
            for shape in shapes:
                count = int(np.prod(shape))
                cores.append(np.fromfile(data, dtype="<f4", count=count).reshape(shape))
        self.replayed += windows
        return cores

    def record(self, index: int, windows: int, cores: Sequence[np.ndarray]) -> None:
        """Keep batch ``index`` (of ``windows`` windows) that this run predicted: the cores of the windows that
        were run, in order. The first batch of a run that goes on from a stopped one must be computed as the
        stopped run's were (backend and precision), else the outputs would mix two arithmetics."""
        if index != len(self.batches):
            raise ValueError(f"batch {index} recorded after {len(self.batches)} batches")
        provenance = None
        if cores and not self._computed_here:  # the network's first batch in this run: its backend settled
            provenance, self._computed_here = self._provenance(), True
            if self.recorded_provenance is not None:
                self._check_computed_alike(provenance)
        offset = (self.folder / _PREDICTIONS).stat().st_size
        try:
            with open(self.folder / _PREDICTIONS, "ab") as data:
                for core in cores:
                    data.write(np.ascontiguousarray(core, dtype="<f4").tobytes())
                data.flush()
                os.fsync(data.fileno())  # the predictions are on disk before the line that says they are
            if self.recorded_provenance is None and provenance is not None:
                write_text_atomic(self.folder / _PROVENANCE, json.dumps(provenance, sort_keys=True))
                self.recorded_provenance = provenance
            line = {"batch": index, "windows": windows, "shapes": [list(core.shape) for core in cores]}
            with open(self.folder / _LINES, "a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
        except OSError as error:
            raise DSen2CRError(
                f"{self.folder}: cannot record a predicted batch ({error.strerror or error}); the batches recorded "
                "before it stay for --resume"
            ) from error
        self.batches.append((windows, offset, [tuple(core.shape) for core in cores]))

    def _check_computed_alike(self, provenance: dict[str, str]) -> None:
        """Refuse to go on where this run computes otherwise than the stopped one did."""
        assert self.recorded_provenance is not None
        keys = [key for key in COMPUTED_BY if key in self.recorded_provenance]  # earlier versions kept fewer
        then = ", ".join(f"{self.recorded_provenance.get(key)}" for key in keys)
        now = ", ".join(f"{provenance.get(key)}" for key in keys)
        if then != now:
            named = ", ".join(key.removeprefix("DSEN2CR_").lower() for key in keys)
            differ = {key for key in keys if self.recorded_provenance.get(key) != provenance.get(key)}
            what = (  # the same settings computed otherwise: another version's form, or another CPU's bf16
                "this version or machine computes that precision otherwise: --overwrite to start the scene again"
                if differ == {ARITHMETIC_TAG}
                else "give --precision, --backend and --device as they were, or --overwrite to start the scene again"
            )
            raise DSen2CRError(
                f"{self.out}: the stopped run's windows were computed in {then} ({named}), this run's in {now}; the "
                f"outputs would mix them: {what}"
            )

    def tags(self, tags: dict[str, str]) -> dict[str, str]:
        """The outputs' tags of what computed them: ``tags`` (this run's predictor's), or, where windows came from
        the journal, the stopped run's (its first batch's check is the scene's), with :data:`RESUMED_TAG`."""
        if not self.replayed or self.recorded_provenance is None:
            return tags
        recorded = {key: value for key, value in self.recorded_provenance.items() if key in _CHECKED}
        if ARITHMETIC_TAG not in recorded:  # a version that kept none: this run's form, not claimed for the others
            unknown = f"the {self.replayed} windows of the stopped run: not recorded"
            recorded[ARITHMETIC_TAG] = f"{tags.get(ARITHMETIC_TAG, 'unknown')} ({unknown})"
        return tags | recorded | {RESUMED_TAG: f"{self.replayed} of {self.identity['windows']}"}

    def __call__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        """Exit callback of the scene's outputs: remove the journal once they are in place (or when a 16-bit
        precision overflowed: the scene runs again); keep it, saying so, when the scene failed after a batch."""
        held = sum(windows for windows, _, _ in self.batches)
        if exc_type is None or issubclass(exc_type, HalfPrecisionOverflowError) or held == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            log.warning(
                "%s: the %d of %d windows predicted are kept in %s: run the command again with --resume to go on "
                "from them (--overwrite starts again)",
                self.out,
                held,
                self.identity["windows"],
                self.folder,
            )
        return False  # never swallow the error


def open_scene_journal(
    predictor: Predictor, job: SceneJob, plan: ScenePlan, product: S2Product, area: Window, windows: int
) -> SceneJournal | None:
    """The scene's journal (:mod:`dsen2cr.scene.journal`) where ``--journal`` keeps one for this scene, or
    ``--resume`` finds a stopped run's; None otherwise (a stopped run's removed with ``--overwrite``)."""
    settings, folder = plan.settings, journal_path(job.out)
    check_no_journal(job.out, resume=settings.resume, overwrite=settings.overwrite)
    stopped = settings.resume and folder.is_dir()
    if not (stopped or resolve_journal(settings.journal, predictor.config, plan.device, area.width * area.height)):
        shutil.rmtree(folder, ignore_errors=True)  # a stopped run's, with --overwrite
        return None
    with_variance = job.uncertainty_out is not None
    tags = predictor.provenance(with_variance=with_variance)
    if tags["DSEN2CR_WEIGHTS_SHA256"] == "unknown":  # nothing could tell a later run what predicted the windows
        if settings.journal == "on":
            raise DSen2CRError(f"{job.out}: --journal on: needs weights read from a file (a model in memory has none)")
        return None
    items = {value: item_digest(value) for value in (job.s2, *s1_parts(job.s1 or "")) if value and is_stac(value)}
    documents = {Path(item_reference(value)[0]).absolute() for value in items}  # known by their items' digests
    files = [path for _, path in local_inputs(job.s2, job.s1, product) if path.absolute() not in documents]
    channels = network_channels(job, plan) * NUM_S2_BANDS
    identity = scene_identity(tags, predictor.precision, job, plan, area, files, windows=windows, channels=channels)
    if items:  # a STAC item by what it says but its signatures: a search saved again (signed anew) is the same
        identity["items"] = items
    journal = SceneJournal.open(
        job.out, identity, lambda: predictor.provenance(with_variance=with_variance), resume=settings.resume
    )
    if not stopped:
        log.info(
            "%s: keeping each predicted window in %s (up to %s, removed once the scene is written), so that a stopped "
            "run goes on with --resume (--journal off keeps none)",
            job.out,
            folder.name,
            describe_bytes(journal.total_bytes),
        )
    return journal


def network_channels(job: SceneJob, plan: ScenePlan) -> int:
    """Channels the network gives per pixel, in 13s: the means, then with ``--uncertainty-out`` the variances
    (with ``--uncertainty-parts`` an ensemble's aleatoric and epistemic ones)."""
    with_variance = job.uncertainty_out is not None
    return 3 if with_variance and plan.settings.uncertainty_parts else 2 if with_variance else 1


def _shown(value: object) -> str:
    """A recorded setting in a message (a long digest shortened)."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text[:60] + "…" if len(text) > 64 else text
