"""A scene's remote assets downloaded before its network runs (``--fetch-inputs``): a signed URL's token (the
Planetary Computer's holds about an hour) would expire during a scene of hours on a CPU, and the run would stop at
its next read. Each asset goes beside the output, named as the output's temporaries are (``.NAME.PID.RANDOM.tmp…``:
what a killed run left is removed by the next run on the output), and is removed when the scene ends."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import is_stac, s1_parts
from dsen2cr.inputs.product import S2Product
from dsen2cr.inputs.stac import SIGNED_FOR_SECONDS, s1_assets
from dsen2cr.outputs.files import describe_bytes, raise_write_failure
from dsen2cr.rasters import GDAL_HTTP_OPTIONS
from dsen2cr.signed_urls import fresh, read_failure, remote_href, shown

log = logging.getLogger(__name__)

#: Seconds a download may wait for the server's next bytes before it fails.
FETCH_TIMEOUT_SECONDS = 60.0


def remote_assets(product: S2Product, s1: str | None) -> list[str]:
    """The GDAL paths of the remote files a scene reads over HTTP(S), each once: S2's bands and masks, and the assets
    of the STAC items ``s1`` names."""
    paths = [*product.files, *product.masks.values()]
    for part in s1_parts(s1) if s1 else []:
        if is_stac(part):
            paths += s1_assets(part)
    return [path for path in dict.fromkeys(paths) if remote_href(path) is not None]


def _retries() -> tuple[int, float]:
    """How often a download is tried again and how many seconds apart: GDAL's remote reads' settings
    (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``: the environment's, else the run's), so both fail alike."""
    setting = {**GDAL_HTTP_OPTIONS, **os.environ}
    return int(setting["GDAL_HTTP_MAX_RETRY"]), float(setting["GDAL_HTTP_RETRY_DELAY"])


def _expected_size(response: http.client.HTTPResponse, done: int) -> int | None:
    """The whole file's size a response says (``Content-Range``'s total, else ``done`` + ``Content-Length``)."""
    total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length")
    return done + int(length) if length and length.isdigit() else None


def _download(path: str, target: Path) -> int:
    """Download the remote GDAL ``path`` to ``target``; its size. A connection that drops, or a body shorter than
    its headers say, is asked again from the byte it reached (as often as GDAL's reads retry); a refusal says why
    (an expired signature: how to go on), as a read would."""
    href = remote_href(path)
    assert href is not None
    retries, delay = _retries()
    done, expected, attempt = 0, None, 0
    while True:
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            request = urllib.request.Request(href, headers=headers)
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
                if done and response.status != 206:  # the server sends the whole file again
                    done = 0
                expected = _expected_size(response, done)
                with target.open("r+b" if done else "wb") as file:
                    file.seek(done)
                    shutil.copyfileobj(response, file, 2**20)
                    file.truncate()
            done = target.stat().st_size
            if expected is None or done >= expected:
                return done
            reason: object = f"the connection closed early, of {expected}"
        except urllib.error.HTTPError as error:
            if error.code not in (429, 500, 502, 503, 504) or attempt >= retries:
                raise DSen2CRError(read_failure(path, f"HTTP {error.code} {error.reason}", download=True)) from None
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            done = target.stat().st_size if target.exists() else 0
        except OSError as error:
            raise_write_failure(error, target)
            raise
        if attempt >= retries:
            raise DSen2CRError(
                f"{shown(href)}: cannot download it ({reason}); --fetch-inputs off reads it as the run goes"
            )
        attempt += 1
        log.info("%s: the download stopped at %d bytes (%s): asked again from there", shown(href), done, reason)
        time.sleep(delay)


@contextlib.contextmanager
def fetched(sources: Mapping[str, str], out: Path) -> Iterator[dict[str, str]]:
    """Download each remote file of ``sources`` (the GDAL path a scene names it by: the one to download, signed anew
    where it was) beside the output ``out`` (as its temporaries); yield each path's local copy, removed on the way
    out."""
    local: dict[str, str] = {}
    start, size = time.perf_counter(), 0
    try:
        for index, (path, source) in enumerate(sources.items()):
            name = Path(urlparse(remote_href(source) or "").path).name or "asset"
            prefix, suffix = f".{out.stem}.{os.getpid()}.", f".tmp{out.suffix}.input{index}-{name}"
            handle, copy = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=out.parent)
            os.close(handle)
            local[path] = copy
            size += _download(source, Path(copy))
        log.info(
            "%s: %d remote assets downloaded beside it (%s in %.1f s), read from there",
            out,
            len(local),
            describe_bytes(size),
            time.perf_counter() - start,
        )
        yield local
    finally:
        for copy in local.values():
            Path(copy).unlink(missing_ok=True)


def local_product(product: S2Product, local: dict[str, str]) -> S2Product:
    """``product`` reading its band files and masks from their ``local`` copies where it has them."""
    files = [local.get(path, path) for path in product.files]
    return replace(product, files=files, masks={key: local.get(path, path) for key, path in product.masks.items()})


def signed_for_now(product: S2Product) -> S2Product:
    """``product`` (resolved at a batch's start) with its Planetary Computer assets whose token expires within
    :data:`~dsen2cr.inputs.stac.SIGNED_FOR_SECONDS` signed anew, as the scene starts (its SDK installed)."""
    return local_product(product, {path: fresh(path, SIGNED_FOR_SECONDS) for path in remote_assets(product, None)})
