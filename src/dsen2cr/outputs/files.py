"""Output files and folders: atomic writes, and the one policy for ``--overwrite`` (docs/design.md §3.4).

Every file the project writes goes through :func:`atomic_path` (a temporary name in the target folder, renamed
when complete). Every command that writes into a folder goes through :func:`prepare_output_folder`, which
replaces only what that command itself writes and refuses a folder that holds anything else. Nothing here
imports rasterio or torch, so weights, configs and reports can be written without the raster stack.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.formats import SNIFFED_AS, SUFFIXES, describe, sniff

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds, else delete it.

    A reader never sees a half-written file at ``path``, and a failed or killed write leaves ``path`` as it was.
    The move never replaces a file the block did not expect: ``path`` as it was on entry (absent: the result is
    linked into place only if nothing appeared there meanwhile; present: replaced only if unchanged). Two runs
    writing one output therefore never both "succeed": the second refuses, naming the file. The temporary is
    ``.STEM.PID.RANDOM.tmpSUFFIX``: the writing process's id tells what a killed run left
    (:func:`~dsen2cr.outputs.locks.remove_leftovers`).
    """
    path = Path(path)
    check_output_folder_of(path)
    expected = _signature(path)
    prefix = f".{path.stem}.{os.getpid()}."
    handle, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except Exception as error:
            raise_write_failure(error, path)
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions of a plain open()
        _publish(tmp, path, expected)
    finally:
        tmp.unlink(missing_ok=True)


#: A temporary of ``atomic_path`` (``.STEM.PID.RANDOM.tmpSUFFIX``) or a file named after it (``….staging.tif``).
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?(?:\..+)?")


def temporary_writer(name: str) -> tuple[str, int] | None:
    """For a file named as :func:`atomic_path`'s temporaries are (or named after one): the name of the output it
    was written for and the id of the process that wrote it; None for any other name."""
    match = _TEMPORARY.fullmatch(name)
    return None if match is None else (match["stem"] + (match["suffix"] or ""), int(match["pid"]))


def process_is_running(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_has_ended(pid: int) -> bool:
    """Whether ``pid`` is another process than this one that no longer runs (a killed run's)."""
    return pid != os.getpid() and not process_is_running(pid)


def is_killed_temporary(name: str, outputs: Collection[str]) -> bool:
    """Whether ``name`` is a temporary that a process which no longer runs (a killed run) left while writing one
    of ``outputs``."""
    writer = temporary_writer(name)
    return writer is not None and writer[0] in outputs and process_has_ended(writer[1])


#: ``os error 28`` in the message of a library that reports the OS's error as text (safetensors).
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


#: The OS errors of a write that failed for want of room or a working device (not of a missing input).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}

#: GDAL's messages for a failed write ("Write failed", "write error", "Failed to write whole XML document": a VRT).
_GDAL_WRITE_FAILED = re.compile(r"[Ww]rite (failed|error)|[Ff]ailed to write")


def raise_write_failure(error: BaseException, path: Path, *, room: int = 0) -> None:
    """If ``error`` is a failed write into ``path``'s folder (:func:`write_failure`; ``room``: what the write
    could still have needed there), raise the one-line error that names ``path`` from it; else return, for the
    caller to re-raise ``error``."""
    reason = write_failure(error, path.parent, room=room)
    if reason is not None:
        raise DSen2CRError(f"{path}: cannot write it ({reason}); nothing was written there") from error


def write_failure(error: BaseException, folder: Path, *, room: int = 0) -> str | None:
    """Why writing into ``folder`` failed, in the OS's words (``No space left on device``), if ``error`` is a
    failed write: an ``OSError``, a library's message carrying the OS error, or GDAL's write error (whose
    cause GDAL prints but does not chain: a full disk is recognised by the folder's free space). None for any
    other error (not a write failure: left as it is). A GDAL error while the folder has less room than ``room``
    (what the write could still have needed: GDAL removes a copy it failed to finish before it reports the
    failure) or 4 MiB is taken for a full disk's: GDAL says where it failed ("TIFFRewriteDirectory:Error
    fetching directory count"), not why."""
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        return os.strerror(error.errno)
    text = str(error)
    if (match := _OS_ERROR_IN_TEXT.search(text)) is not None and int(match.group(1)) in _WRITE_ERRNOS:
        return os.strerror(int(match.group(1)))
    causes = f"{text} {error.__cause__ or ''}"
    if not type(error).__module__.startswith("rasterio"):
        return None
    stat = os.statvfs(folder)
    if stat.f_bavail * stat.f_frsize < max(room, 4 * 2**20):
        return os.strerror(errno.ENOSPC)
    return "GDAL could not write the file" if _GDAL_WRITE_FAILED.search(causes) else None


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """What identifies the entry at ``path`` now (device, inode, size, modification time), None if absent; a
    symbolic link is itself the entry (the move replaces the link, never writes its target)."""
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _publish(tmp: Path, path: Path, expected: tuple[int, int, int, int] | None) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` is no longer as it was when the write began (``expected``)."""
    lost = f"{path}: {{}} while this run was writing it (another run writing the same output?); this run's result "
    lost += "was not written"
    if expected is not None:
        if _signature(path) != expected:
            raise DSen2CRError(lost.format("changed"))
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if anything appeared at path: no-replace
    except FileExistsError:
        raise DSen2CRError(lost.format("appeared")) from None
    except OSError:  # a file system without hard links: check, then rename (a narrow window remains)
        if os.path.lexists(path):
            raise DSen2CRError(lost.format("appeared")) from None
        os.replace(tmp, path)


def _umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file, read in 16 MiB blocks (about 0.1 s for the paper's 76 MB weights); None when it
    cannot be read (the loader says why)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while block := file.read(16 * 2**20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a regular file; a one-line error naming it otherwise (missing, a folder, or
    a device, FIFO or socket that reading would block on or never finish)."""
    path = Path(path)
    if path.is_dir():
        raise DSen2CRError(f"{path}: is a directory, expected a {what} file")
    if not path.exists():
        raise DSen2CRError(f"{path}: {what} file not found")
    if not path.is_file():
        raise DSen2CRError(f"{path}: not a regular file (a device, FIFO or socket); expected a {what} file")
    return path


def check_output_folder_of(path: Path) -> None:
    """The folder of an output file must exist and be writable."""
    folder = path.parent
    if not folder.is_dir():
        raise DSen2CRError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DSen2CRError(f"{path}: output folder {folder} is not writable")


#: The bytes that the longest file named after an output adds to its name: ``atomic_path``'s temporary
#: (``.NAME`` as ``.STEM.PID.RANDOM.tmpSUFFIX``, a pid of up to 7 digits) and a scene's staging and overview files
#: named after that (``.staging.tif.ovr128.tif``); the lock (``.NAME.lock``) adds less.
NAMED_AFTER_BYTES = 45


def check_output_file(path: str | Path, *, overwrite: bool, kind: str | None = None) -> Path:
    """Fail early unless ``path`` can be written: its folder exists and is writable, and it does not exist
    yet (or ``overwrite``, and it is a file). With ``kind`` (what the command writes, a key of
    :data:`dsen2cr.formats.SUFFIXES`): its name must end as that kind's files do, and an existing file that
    holds another kind of data (a checkpoint where weights go, a dataset file) is never replaced, ``overwrite``
    or not."""
    path = Path(path)
    if path.is_dir():
        raise DSen2CRError(f"{path}: is a folder, expected an output file name")
    if kind is not None and path.suffix.lower() not in SUFFIXES[kind]:
        raise DSen2CRError(
            f"{path}: this command writes {describe(kind)}; name it *{SUFFIXES[kind][0]} (the name says what it is)"
        )
    check_name_length(path)
    if os.path.lexists(path) and not overwrite:  # a symbolic link exists, whether its target does or not
        raise DSen2CRError(f"{path}: exists; pass --overwrite to replace it")
    if path.is_file() and kind is not None and (found := sniff(path)) not in (SNIFFED_AS.get(kind, kind), "empty"):
        raise DSen2CRError(
            f"{path}: holds {describe(found)}, not {describe(kind)}: it was not written by this command and is not "
            "replaced, --overwrite or not (swapped arguments?)"
        )
    check_output_folder_of(path)
    return path


def check_name_length(path: Path) -> None:
    """Refuse a name that leaves the files named after it (:data:`NAMED_AFTER_BYTES`) no room under the
    folder's longest file name (255 bytes on common file systems)."""
    try:
        longest = os.pathconf(path.parent if path.parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    room, length = longest - NAMED_AFTER_BYTES, len(os.fsencode(path.name))
    if length > room:
        raise DSen2CRError(
            f"{path}: a name of {length} bytes leaves no room for the files named after it while it is written "
            f"(temporary, lock, staging); an output's name takes at most {room} bytes here: shorten it"
        )


def check_output_folder(
    path: str | Path,
    *,
    owned: Collection[str],
    overwrite: bool,
    what: str,
    hint: str = "pass --overwrite to replace it",
    keep_earlier: bool = False,
) -> list[Path]:
    """Check, without changing anything, that a command may write the entries ``owned`` (which make up
    ``what``, e.g. "a demo") into the folder ``path``; return the earlier entries that
    :func:`prepare_output_folder` will remove. ``hint`` tells the user what to do about an earlier run.

    An empty or missing folder is fine. A folder that holds only entries of ``owned`` (an earlier run of the
    same command) is refused unless ``overwrite``. A folder holding anything else is refused even with
    ``overwrite``: it is not the command's to delete (``dsen2cr demo --out ~ --overwrite`` must never touch a
    home folder). The temporaries that a killed run left while writing entries of ``owned`` are an earlier
    run's entries too (removed without ``overwrite`` when the folder holds nothing else). ``keep_earlier``: an
    earlier run's entries are kept, to go on where it stopped (only a killed run's temporaries are removed).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DSen2CRError(f"{out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    killed = [name for name in entries if is_killed_temporary(name, owned)]  # a killed earlier run's, not foreign
    if len(killed) == len(entries):  # no earlier run completed a file here: nothing to replace
        return [out / name for name in killed]
    foreign = [name for name in entries if name not in owned and name not in killed]
    if foreign:
        raise DSen2CRError(
            f"{out}: holds {foreign[0]!r}, which is not part of {what}; choose an empty or new folder "
            "(--overwrite only replaces what an earlier run of the command wrote)"
        )
    if keep_earlier:
        return [out / name for name in killed]
    if not overwrite:
        raise DSen2CRError(f"{out}: already holds {what}; {hint}")
    return [out / name for name in entries]


def prepare_output_folder(
    path: str | Path,
    *,
    owned: Collection[str],
    overwrite: bool,
    what: str,
    hint: str = "pass --overwrite to replace it",
    keep_earlier: bool = False,
) -> Path:
    """:func:`check_output_folder`, then remove the earlier run's entries (only a killed run's temporaries with
    ``keep_earlier``) and create the folder."""
    out = Path(path)
    earlier = check_output_folder(
        out, owned=owned, overwrite=overwrite, what=what, hint=hint, keep_earlier=keep_earlier
    )
    for target in earlier:
        _remove_entry(target)
    if killed := sum(temporary_writer(target.name) is not None for target in earlier):
        log.info("%s: removed %s that a killed run left in it", out, "1 file" if killed == 1 else f"{killed} files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DSen2CRError(f"{out}: cannot create the output folder ({error.strerror})") from None
    return out


@contextlib.contextmanager
def output_folder(
    path: str | Path,
    *,
    owned: Collection[str],
    overwrite: bool,
    what: str,
    hint: str = "pass --overwrite to replace it",
    keep_earlier: bool = False,
    keep_on_failure: Callable[[], Collection[str]] | None = None,
) -> Iterator[Path]:
    """:func:`prepare_output_folder` for the duration of a command; if the command fails, the entries it wrote
    are removed again (and the folder, if it created it), so a failed command leaves nothing behind (with
    ``keep_earlier``, the earlier run's entries stay; ``keep_on_failure``, asked once the command failed, names
    entries to keep too: what a rerun can go on from)."""
    out = Path(path)
    created = not out.exists()
    prepare_output_folder(out, owned=owned, overwrite=overwrite, what=what, hint=hint, keep_earlier=keep_earlier)
    kept = {name for name in owned if os.path.lexists(out / name)} if keep_earlier else set()
    try:
        yield out
    except BaseException:
        kept.update(keep_on_failure() if keep_on_failure is not None else ())
        for name in owned:
            if name not in kept:
                _remove_entry(out / name, best_effort=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise


def _remove_entry(target: Path, *, best_effort: bool = False) -> None:
    """Remove one entry of an output folder: a folder with its contents, a file, or a link (not its target);
    ``best_effort`` (cleaning up after a failure) ignores what cannot be removed or is already gone."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=best_effort)
    elif target.exists() or target.is_symlink():
        target.unlink(missing_ok=best_effort)


def check_distinct_outputs(outputs: list[tuple[str, Path]], inputs: list[tuple[str, Path]]) -> None:
    """Refuse, even with ``--overwrite`` and before any work, an output path that is one of the inputs, lies
    inside an input folder (a product), or that another output of the same command also writes (``(role,
    path)`` pairs; the same file under another name, through a link or a relative path, counts as the same)."""
    seen: dict[str, str] = {}
    # a product folder (an S2 input given as a folder) is read whole: nothing may be written into it
    folders = {path_identity(path): f"input {role} {path}" for role, path in inputs if role == "s2" and path.is_dir()}
    for role, path in inputs:
        seen.setdefault(path_identity(path), f"input {role} {path}")
    for role, path in outputs:
        key = path_identity(path)
        if key in seen:
            raise DSen2CRError(f"{path}: output {role} would replace {seen[key]}; choose another output name")
        inside = next((name for folder, name in folders.items() if key.startswith(folder + os.sep)), None)
        if inside is not None:
            raise DSen2CRError(
                f"{path}: output {role} would replace {inside}'s file (an input product is read, never written); "
                "choose another output name"
            )
        seen[key] = f"output {role} {path}"


def path_identity(path: Path) -> str:
    """A key that is equal for two paths naming the same file (resolved links, case kept)."""
    return os.path.normcase(os.path.realpath(path))


def describe_bytes(size: int) -> str:
    """A size for people: 4.27 GB, 1.77 MB, 12 kB, 7 bytes."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.2f} MB"
    return f"{size / 1e3:.0f} kB" if size >= 1e3 else f"{size} bytes"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically; return its path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
