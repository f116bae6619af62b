"""A scene's remote assets downloaded before its network runs (``--fetch-inputs``): a signed URL's token (the
Planetary Computer's holds about an hour) would expire during a scene of hours on a CPU, and the run would stop at
its next read. Each asset goes beside the output, named as the output's temporaries are (``.NAME.PID.RANDOM.tmp…``:
what a killed run left is removed by the next run on the output), and is removed when the scene ends."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import is_stac, s1_parts
from dsen2cr.inputs.product import S2Product
from dsen2cr.inputs.stac import s1_assets
from dsen2cr.outputs.files import describe_bytes, raise_write_failure
from dsen2cr.signed_urls import read_failure, remote_href

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


def _download(path: str, target: Path) -> int:
    """Download the remote GDAL ``path`` to ``target``; its size. A refusal says why (an expired signature: how to go
    on), as a read would."""
    href = remote_href(path)
    assert href is not None
    try:
        with urllib.request.urlopen(href, timeout=FETCH_TIMEOUT_SECONDS) as response, target.open("wb") as file:
            shutil.copyfileobj(response, file, 2**20)
    except urllib.error.HTTPError as error:
        message = read_failure(path, f"HTTP {error.code} {error.reason}")
        raise DSen2CRError(message.replace("cannot read pixels from the server", "cannot download it")) from None
    except (urllib.error.URLError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise DSen2CRError(
            f"{path}: cannot download it ({reason}); --fetch-inputs off reads it as the run goes"
        ) from None
    except OSError as error:
        raise_write_failure(error, target)
        raise
    return target.stat().st_size


@contextlib.contextmanager
def fetched(paths: Iterable[str], out: Path) -> Iterator[dict[str, str]]:
    """Download the remote GDAL ``paths`` beside the output ``out`` (as its temporaries); yield each path's local
    copy, removed on the way out."""
    local: dict[str, str] = {}
    start, size = time.perf_counter(), 0
    try:
        for index, path in enumerate(paths):
            name = Path(urlparse(remote_href(path) or "").path).name or "asset"
            prefix, suffix = f".{out.stem}.{os.getpid()}.", f".tmp{out.suffix}.input{index}-{name}"
            handle, copy = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=out.parent)
            os.close(handle)
            local[path] = copy
            size += _download(path, Path(copy))
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
