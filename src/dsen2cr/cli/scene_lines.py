"""What ``dsen2cr remove-clouds`` prints of its scenes: a line for each scene written (or, with ``--dry-run``,
checked), and which of a batch's scenes warned while they ran."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsen2cr.settings import SceneJob, SceneSettings


def run_and_report(jobs: list[SceneJob], settings: SceneSettings, manifest: tuple[Path, ...]) -> None:
    """Run the scenes, printing a line for each one written, and where several were, which of them warned."""
    from dsen2cr.scene.jobs import run_scene_jobs

    job_of = {job.out: job for job in jobs}
    warned, written = [], 0
    for report in run_scene_jobs(jobs, settings, extra_inputs=manifest):
        written += 1
        warned += [report.out.name] if report.warnings else []
        size = f"{report.megapixels:.2f} Mpx" if report.megapixels >= 0.01 else f"{round(report.megapixels * 1e6)} px"
        print(
            f"wrote {report.out}: {size} in {report.seconds:.1f} s "
            f"({report.megapixels / max(report.seconds, 1e-9):.3f} Mpx/s, {report.tiles} tile"
            + ("s" if report.tiles != 1 else "")
            + (f", {report.skipped} without valid pixels skipped" if report.skipped else "")
            + (f", {report.resumed} predicted by a stopped run)" if report.resumed else ")")
            + ("; cloud {:.1f}%, shadow {:.1f}%".format(*report.mask_percent) if report.mask_percent else "")
            + (f" of the valid pixels (mask {settings.mask})" if report.mask_percent else "")
            + _also_written(job_of.get(report.out))
        )
    if written > 1 and warned:  # a batch's lines scroll by: which images to read again
        listed = ", ".join(warned[:10]) + (f" and {len(warned) - 10} more" if len(warned) > 10 else "")
        print(f"{len(warned)} of the {written} scenes written warned while they ran: {listed} (their DSEN2CR_WARNINGS)")


def dry_run(jobs: list[SceneJob], settings: SceneSettings, manifest: tuple[Path, ...]) -> None:
    """``--dry-run``: a line for each scene (``would write OUT: …``, or ``refused: REASON``); refused scenes end it
    with an error that counts them."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.scene.dry_run import dry_run_scene_jobs

    checks = dry_run_scene_jobs(jobs, settings, extra_inputs=manifest)
    for check in checks:
        if check.refused is not None:
            print(f"refused: {check.refused}")
        else:
            print(f"would write {check.job.out}: {check.said}{_also_written(check.job)}")
    refused = sum(check.refused is not None for check in checks)
    if refused:
        raise DSen2CRError(
            f"--dry-run: {refused} of {len(checks)} scene{'s' if len(checks) != 1 else ''} would be refused (listed "
            "above); nothing was written"
        )
    print(f"dry run: {len(checks)} scene{'s' if len(checks) != 1 else ''} checked; nothing was written")


def _also_written(job: SceneJob | None) -> str:
    """``; also S.tif (sigma), M.tif (mask), P.png (preview), I.json (STAC item)``: a scene's other outputs, for
    its result line."""
    if job is None:
        return ""
    others = [(job.uncertainty_out, "sigma"), (job.mask_out, "mask"), (job.preview, "preview")]
    others.append((job.stac_item, "STAC item"))
    written = [f"{path} ({what})" for path, what in others if path is not None]
    return f"; also {', '.join(written)}" if written else ""
