"""Signed URLs, as catalogues hand out their assets' hrefs: the Planetary Computer signs them with Azure SAS tokens
(``se=``, the expiry), S3 and Google Cloud Storage presign theirs (``X-Amz-Date`` and ``X-Amz-Expires``,
``X-Goog-Date`` and ``X-Goog-Expires``). A token expires, mostly within the hour: a search saved and read later is
refused with when it expired, a scene whose token expires while it runs stops (its journal kept), and a search saved
again (signed anew) is the same search for ``--resume``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlparse, urlunparse
from xml.sax.saxutils import unescape

from dsen2cr.bucket_access import bucket_hint
from dsen2cr.errors import DSen2CRError

#: What to do once a search's signatures expired.
SIGN_ANEW = "save the search again (its assets signed anew)"
#: The hosts of the Planetary Computer's blob storage, whose tokens its SDK (``dsen2cr[pc]``) gets anew.
PC_BLOB_HOSTS = ".blob.core.windows.net"
#: Folders of blob storage whose unsigned files the token API would not sign (asked once a process).
_UNSIGNABLE: set[str] = set()


def _stamp(text: str) -> datetime | None:
    """A ``20231201T235900Z`` stamp (SigV4's) in UTC, or None."""
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def url_expiry(href: str) -> datetime | None:
    """When the signature of ``href`` expires (in UTC), or None where its query says none (not signed, or no time)."""
    query = parse_qs(urlparse(href).query)
    if "se" in query:  # Azure SAS: the signed expiry, ISO 8601
        try:
            expiry = datetime.fromisoformat(query["se"][0].replace("Z", "+00:00"))
        except ValueError:
            return None
        return expiry if expiry.tzinfo else expiry.replace(tzinfo=timezone.utc)
    for scheme in ("Amz", "Goog"):  # S3 and Google Cloud Storage (V4): signed at a time, valid for some seconds
        signed, seconds = query.get(f"X-{scheme}-Date"), query.get(f"X-{scheme}-Expires")
        if signed and seconds and seconds[0].isdigit() and (start := _stamp(signed[0])) is not None:
            return start + timedelta(seconds=int(seconds[0]))
    return None


def unsigned(href: str) -> str:
    """``href`` without its query (its signature and the token's times): what a search saved again still says."""
    parsed = urlparse(href)
    return urlunparse(parsed._replace(query="")) if parsed.scheme in ("http", "https") else href


def earliest_expiry(hrefs: Iterable[str]) -> datetime | None:
    """The earliest expiry of the signed ``hrefs``, or None where none is signed."""
    return min(filter(None, map(url_expiry, hrefs)), default=None)


def _utc_text(when: datetime) -> str:
    """A time in UTC as ``2023-06-02T10:45:00Z``."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def refuse_expired(location: str, hrefs: Iterable[str]) -> None:
    """Refuse the STAC item at ``location`` where a signature of its asset ``hrefs`` has expired: reading them would
    only get the server's refusal, after the work before it. Planetary Computer assets: with how to have them signed
    anew by themselves where its SDK is missing."""
    hrefs = list(hrefs)
    expiry = earliest_expiry(hrefs)
    if expiry is not None and expiry <= datetime.now(timezone.utc):
        sdk = ", or pip install 'dsen2cr[pc]' (signed anew by themselves)" if any(map(_is_pc_blob, hrefs)) else ""
        raise DSen2CRError(
            f"{location}: the signed URLs of its assets expired at {_utc_text(expiry)}; {SIGN_ANEW}{sdk}"
        )


def _is_pc_blob(href: str) -> bool:
    """Whether ``href`` (or the GDAL path of it) lies in the Planetary Computer's blob storage (Azure's hosts)."""
    return urlparse(remote_href(href) or "").netloc.endswith(PC_BLOB_HOSTS)


def _planetary_computer() -> Any:
    """The Planetary Computer's SDK (``dsen2cr[pc]``), or None where it is not installed."""
    try:
        import planetary_computer.sas
        import planetary_computer.utils
    except ImportError:
        return None
    return planetary_computer


def fresh(gdal_path: str, seconds: float) -> str:
    """``gdal_path`` (a remote file's, or its URL) signed through the Planetary Computer's SDK where it lies in its
    blob storage (:data:`PC_BLOB_HOSTS`) and the SDK is installed: anew where its signature expires within
    ``seconds``, and where it is not signed at all (an item read from its STAC API without the SDK's signing: its
    assets refuse unsigned reads; a container that cannot be signed is read as it is); else as it is."""
    href, expiry = remote_href(gdal_path), url_expiry(gdal_path)
    if href is None or not _is_pc_blob(href) or (sdk := _planetary_computer()) is None:
        return gdal_path
    if expiry is None:
        folder = unsigned(href).rsplit("/", 1)[0]  # scheme, host and path: the container and its folders
        if urlparse(href).query or folder in _UNSIGNABLE:  # signed some other way, or not the API's to sign
            return gdal_path
        try:
            return gdal_path.replace(href, _signed(sdk, href))
        except Exception:  # another's public container: its files read unsigned, the API not asked again
            _UNSIGNABLE.add(folder)
            return gdal_path
    if (expiry - datetime.now(timezone.utc)).total_seconds() > seconds:
        return gdal_path
    try:
        return gdal_path.replace(href, _signed(sdk, href))
    except Exception as error:  # requests', urllib3's and pydantic's errors: the API's answer, or none
        raise DSen2CRError(
            f"{shown(href)}: its token expires at {_utc_text(expiry)} and cannot be signed anew through the "
            f"Planetary Computer's token API ({' '.join(str(error).split())[:200]}); {SIGN_ANEW}"
        ) from None


def _signed(sdk: Any, href: str) -> str:
    """``href`` (its query dropped) signed with a token of its container from the SDK's token API (kept while valid),
    asked at most 4 times (the SDK's default, 10 with backoff, waits minutes where the API cannot be reached)."""
    plain = unsigned(href)
    account, container = sdk.utils.parse_blob_url(urlparse(plain))
    return str(sdk.sas.get_token(account, container, retry_total=3, retry_backoff_factor=0.5).sign(plain).href)


def remote_href(gdal_path: str) -> str | None:
    """The URL a GDAL path reads (``/vsicurl/https://…``, or the URL itself), or None for a local path."""
    text = gdal_path.removeprefix("/vsicurl/")
    return text if text.startswith(("http://", "https://")) else None


def read_failure(gdal_path: str, reason: str, *, download: bool = False) -> str:
    """The line that says why reading pixels of ``gdal_path`` (``download``: downloading it) failed, GDAL's or the
    server's ``reason``: a signed URL whose token expired since the run began is refused by its server (GDAL says
    only that the read failed), a remote file's read failed on the way, a local file is likely truncated."""
    href = remote_href(gdal_path)
    if gdal_path.startswith("<VRTDataset"):
        return f"{displayed(gdal_path)}: cannot read pixels, a file may be truncated ({reason})"
    if href is None and gdal_path.startswith("/vsis3/"):
        return f"{gdal_path}: cannot read pixels from the bucket ({reason}){bucket_hint(gdal_path)}"
    if href is None:
        return f"{gdal_path}: cannot read pixels, the file may be truncated ({reason})"
    expiry = url_expiry(href)
    if expiry is not None and expiry <= datetime.now(timezone.utc):
        return (
            f"{shown(href)}: the server refused the {'download' if download else 'read'}: the URL's signature expired "
            f"at {_utc_text(expiry)}; {SIGN_ANEW} and run again (--resume goes on from the windows a stopped scene's "
            "journal holds)"
        )
    return f"{shown(href)}: cannot {'download it' if download else 'read pixels from the server'} ({reason})"


def shown(href: str) -> str:
    """A URL as a message names it: without its query (a signed URL's token is a credential; logs are shared)."""
    return unsigned(href) + ("?…" if urlparse(href).query else "")


def displayed(gdal_path: str) -> str:
    """A GDAL path as a message names it: a remote file's URL through :func:`shown`, a VRT's XML by the files and
    bands it reads (``a_vv.tif band 1 + a_vh.tif band 1``), anything else as it is."""
    if gdal_path.startswith("<VRTDataset"):
        sources = re.findall(r"<SourceFilename[^>]*>(.*?)</SourceFilename><SourceBand>(\d+)</SourceBand>", gdal_path)
        return " + ".join(f"{displayed(unescape(path))} band {band}" for path, band in sources) or "VRT"
    href = remote_href(gdal_path)
    return gdal_path if href is None else shown(href)
