"""``dsen2cr data download``: SEN12MS-CR from its public server, resumable, verified, unpacked atomically, and
indexed with the split later work uses (docs/design.md §3.7).

Each archive (season x modality) is fetched to ``DIR/.downloads/NAME.part`` and resumed with an HTTP ``Range``
request after a dropped connection, a server error (bounded retries with backoff) or a killed process; its
length is verified; it is unpacked into a temporary folder inside DIR and its top folder renamed into place,
so a tree that looks complete is complete. A rerun skips what is in place.
"""

from __future__ import annotations

import gzip
import logging
import os
import shlex
import shutil
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dsen2cr.data.layout import SEASONS
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dataserv.ub.tum.de/s/m1554803/download?path=/&files="
MODALITIES = ("s1", "s2", "s2_cloudy")
#: Archive sizes in KiB (the dataset's public download script), for the free-space check and the progress
#: total when the server gives no length.
SIZES_KIB = {
    ("spring", "s2"): 48_568_904,
    ("summer", "s2"): 56_425_520,
    ("fall", "s2"): 68_291_864,
    ("winter", "s2"): 30_580_552,
    ("spring", "s2_cloudy"): 48_569_368,
    ("summer", "s2_cloudy"): 56_426_004,
    ("fall", "s2_cloudy"): 68_292_448,
    ("winter", "s2_cloudy"): 30_580_812,
    ("spring", "s1"): 15_026_120,
    ("summer", "s1"): 17_456_784,
    ("fall", "s1"): 21_127_832,
    ("winter", "s1"): 9_460_956,
}
#: The split of later work (UnCRtainTS and after), by ROI, matched exactly; everything else trains.
VALIDATION_ROIS = {"winter": (22, 107, 130, 84), "summer": (19, 80, 127, 17), "fall": (65,), "spring": (17,)}
TEST_ROIS = {"spring": (106, 123, 140, 31, 44), "summer": (119, 73), "fall": (139,), "winter": (108, 63)}
RETRIES = 5
#: Seconds a connection or a read may wait for the server (per socket operation: a slow but steady download
#: never hits it; a stalled one is retried, resuming where it stopped).
READ_TIMEOUT = 20
#: ``--jobs`` at most: more parallel archives than this only split the same bandwidth.
MAX_JOBS = 12
DOWNLOADS = ".downloads"


@dataclass(frozen=True)
class Archive:
    """One archive of the release: a season and a modality."""

    season: str
    modality: str

    @property
    def top(self) -> str:
        """The folder it unpacks to (``ROIs1158_spring_s1``)."""
        return f"{SEASONS[self.season]}_{self.modality}"

    @property
    def name(self) -> str:
        """Its file name on the server."""
        return f"{self.top}.tar.gz"

    @property
    def size(self) -> int:
        """Its size in bytes, as published."""
        return SIZES_KIB[(self.season, self.modality)] * 1024


def write_splits(out: str | Path) -> tuple[Path, Path]:
    """Write the validation and test ROI lists (``val_rois.txt``, ``test_rois.txt``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rois in (("val_rois.txt", VALIDATION_ROIS), ("test_rois.txt", TEST_ROIS)):
        lines = [f"{SEASONS[season]}/{roi}" for season, numbers in rois.items() for roi in numbers]
        paths.append(write_text_atomic(out / name, "\n".join(lines) + "\n"))
    return paths[0], paths[1]


def download_dataset(
    out: str | Path,
    *,
    seasons: Sequence[str] = tuple(SEASONS),
    modalities: Sequence[str] = MODALITIES,
    base_url: str = DEFAULT_BASE_URL,
    keep_archives: bool = False,
    progress: bool = True,
    backoff: float = 2.0,
    jobs: int = 1,
) -> Path | None:
    """Download, verify and unpack the chosen archives into ``out`` (``jobs`` at a time); index the tree; return
    its file list (None while no season has all three modalities: nothing to index yet)."""
    if not 1 <= jobs <= MAX_JOBS:
        raise DSen2CRError(f"--jobs: must be in [1, {MAX_JOBS}], got {jobs}")
    for season in seasons:
        if season not in SEASONS:
            raise DSen2CRError(f"--seasons: unknown season {season!r}; choose from {', '.join(SEASONS)}")
    for modality in modalities:
        if modality not in MODALITIES:
            raise DSen2CRError(f"--modalities: unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DSen2CRError(f"{out}: exists and is not a folder")
    archives = [Archive(s, m) for s in seasons for m in modalities]
    todo = [a for a in archives if not (out / a.top).is_dir()]
    sizes = {a: _remote_size(base_url + a.name, a) for a in todo}  # a server that cannot be reached: no folder
    _check_free_space(out, sizes)
    out.mkdir(parents=True, exist_ok=True)

    # one bar for all the bytes to fetch, and one per archive below it
    overall = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="SEN12MS-CR", disable=not progress)

    stop = threading.Event()  # set when the run ends early (an error, Ctrl-C, SIGTERM): every worker stops

    def install(position: int, archive: Archive) -> None:
        path = _fetch(archive, out, base_url, progress, backoff, position + 1, overall, stop)
        _unpack(archive, path, out)
        if not keep_archives:
            path.unlink()

    with overall, ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="dsen2cr-download") as pool:
        futures = [pool.submit(install, i, a) for i, a in enumerate(todo)]
        try:
            for future in futures:
                future.result()  # the first failure is raised once the others have stopped
        except BaseException:
            stop.set()  # the workers stop within one read (at most READ_TIMEOUT s) or one retry pause
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    downloads = out / DOWNLOADS
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    val, test = write_splits(out)
    if not _complete_seasons(out):
        return None
    from dsen2cr.data.index import index_dataset
    from dsen2cr.data.layout import read_roi_list

    file_list = out / "files.csv"
    index_dataset(out, file_list, val_rois=read_roi_list(val), test_rois=read_roi_list(test), overwrite=True)
    return file_list


def _complete_seasons(out: Path) -> list[str]:
    """The seasons under ``out`` that have all three modalities. Each season that has only some is warned of,
    and the command that completes them is given once (a patch needs its S1, S2 and cloudy S2 files)."""
    complete, lacking = [], {}
    for season, top in SEASONS.items():
        missing = [modality for modality in MODALITIES if not (out / f"{top}_{modality}").is_dir()]
        if not missing:
            complete.append(season)
        elif len(missing) < len(MODALITIES):
            lacking[season] = missing
            log.warning(
                "%s: %s not downloaded yet; its patches join the file list once they are", top, ", ".join(missing)
            )
    if lacking:
        modalities = [m for m in MODALITIES if any(m in missing for missing in lacking.values())]
        log.warning(
            "to complete the tree: dsen2cr data download --out %s --seasons %s --modalities %s",
            shlex.quote(str(out)),
            " ".join(lacking),
            " ".join(modalities),
        )
    return complete


def _remote_size(url: str, archive: Archive) -> int:
    """The archive's length as the server states it (HEAD), else the published size; a missing archive (4xx)
    is refused here, before anything is downloaded."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=READ_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length else archive.size
    except urllib.error.HTTPError as error:
        if error.code in (405, 501):  # the server does not answer HEAD: trust the published size
            return archive.size
        raise DSen2CRError(f"{url}: the server answered {error.code} {error.reason} for {archive.name}") from None
    except OSError as error:
        raise DSen2CRError(
            f"{url}: cannot reach the server for {archive.name} ({error}); check the network, or give a mirror "
            "with --base-url"
        ) from None


def _check_free_space(out: Path, sizes: dict[Archive, int]) -> None:
    """Refuse, before anything is fetched, a download that will not fit (each archive plus its unpacked tree,
    taken as big again; what is already downloaded counts as fetched)."""
    needed = 0
    for archive, size in sizes.items():
        partial = out / DOWNLOADS / f"{archive.name}.part"
        complete = out / DOWNLOADS / archive.name
        fetched = complete.stat().st_size if complete.exists() else partial.stat().st_size if partial.exists() else 0
        needed += (size - fetched) + size
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise DSen2CRError(
            f"{out}: needs {needed / 2**30:.1f} GiB free (archives and their unpacked trees), "
            f"has {free / 2**30:.1f} GiB"
        )


def _fetch(
    archive: Archive,
    out: Path,
    base_url: str,
    progress: bool,
    backoff: float,
    position: int = 0,
    overall: tqdm | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """The archive at ``DIR/.downloads/NAME``, resumed from its partial file; fetched again once if corrupt."""
    folder = out / DOWNLOADS
    folder.mkdir(exist_ok=True)
    final, partial = folder / archive.name, folder / f"{archive.name}.part"
    url = base_url + archive.name
    for attempt in range(2):
        if not final.exists():
            _download(url, partial, archive, progress, backoff, position, overall, stop or threading.Event())
            os.replace(partial, final)
        if _is_complete_tar(final):
            return final
        final.unlink()
        if attempt == 0:
            log.warning("%s: the archive is corrupt; fetching it again", archive.name)
    raise DSen2CRError(
        f"{url}: the archive is corrupt twice in a row (not a complete tar.gz); try later or another mirror"
    )


def _download(
    url: str,
    partial: Path,
    archive: Archive,
    progress: bool,
    backoff: float,
    position: int = 0,
    overall: tqdm | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Append to ``partial`` until the server's length is reached, resuming with ``Range`` on failures; give up
    at once when ``stop`` is set (checked at every chunk and during the pauses between retries)."""
    stop = stop or threading.Event()
    failures = 0
    total: int | None = None
    bar_options = {"unit": "B", "unit_scale": True, "desc": archive.name, "position": position, "dynamic_ncols": True}
    with tqdm(disable=not progress, **bar_options) as bar:
        while True:
            have = partial.stat().st_size if partial.exists() else 0
            if total is not None and have >= total:
                break
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            try:
                with urllib.request.urlopen(request, timeout=READ_TIMEOUT) as response:
                    resumed = response.status == 206
                    length = response.headers.get("Content-Length")
                    total = (have if resumed else 0) + int(length) if length is not None else archive.size
                    bar.total, bar.n = total, have if resumed else 0
                    with partial.open("ab" if resumed else "wb") as file:
                        # read1: what has arrived (up to 1 MiB), so a killed process keeps it for the resume
                        while chunk := response.read1(1 << 20):
                            if stop.is_set():
                                raise _StoppedError
                            file.write(chunk)
                            bar.update(len(chunk))
                            if overall is not None:
                                overall.update(len(chunk))
                got = partial.stat().st_size
                if got != total:
                    raise ConnectionError(f"connection closed after {got} of {total} bytes")
                break
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raise DSen2CRError(
                        f"{url}: the server answered {error.code} {error.reason} for {archive.name}"
                    ) from None
                failures += 1
                reason = f"server error {error.code}"
            except (OSError, ConnectionError) as error:
                failures += 1
                reason = str(error)
            if failures > RETRIES:
                raise DSen2CRError(f"{url}: gave up after {RETRIES} retries ({reason}); rerun to resume")
            log.warning("%s: %s (%s); resuming in %.1f s", archive.name, reason, url, backoff * 2 ** (failures - 1))
            if stop.wait(backoff * 2 ** (failures - 1)):
                raise _StoppedError


class _StoppedError(Exception):
    """A worker stopped because the run is ending (the main thread raises the reason)."""


def _is_complete_tar(path: Path) -> bool:
    """Whether ``path`` reads to its end as a gzip-compressed tar: the whole gzip stream (its CRC and length
    trailer checked), then every tar member."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
        with tarfile.open(path, "r:gz") as tar:
            for _ in tar:
                pass
        return True
    except (tarfile.TarError, OSError, EOFError):
        return False


def _unpack(archive: Archive, path: Path, out: Path) -> None:
    """Unpack into a temporary folder inside ``out`` and rename its top folder into place."""
    tmp = out / f".unpack-{archive.top}"
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed earlier unpack
    tmp.mkdir()
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        top = tmp / archive.top
        if not top.is_dir():
            raise DSen2CRError(f"{path}: does not unpack to {archive.top}/")
        os.replace(top, out / archive.top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
