"""STAC items whose assets are signed URLs (the Planetary Computer signs its hrefs with SAS tokens that expire, as
S3 and Google Cloud Storage presign theirs): a scene stopped when its token expired goes on from its journal once the
search is saved again (signed anew), and a token already expired is refused before any work. A server on 127.0.0.1
serves the assets with HTTP ranges, as blob storage does, and refuses signatures it did not give or that expired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import rasterio

from conftest import split_s1, write_stac_item
from dsen2cr import signed_urls
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.predictor import Predictor
from dsen2cr.signed_urls import url_expiry

#: 50 x 40 px in windows of 16 px overlapping by 4: 4 x 3 windows, one batch each on a CPU.
WINDOWS = ["--tile", "16", "--overlap", "4"]


#: The store's server, run in a process of its own (GDAL reads some parts of a file holding Python's lock: a server in
#: the test's process would not answer them). Argument: the folder; the signature it takes is read from the folder's
#: ``.signature`` at each request, each request's path appended to ``.requests``; it prints its port.
SERVER = r"""
import http.server, json, sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

folder = Path(sys.argv[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.do_GET(body=False)

    def do_GET(self, body=True):
        with open(folder / ".requests", "a") as log:
            log.write(self.path + "\n")
        url = urlparse(self.path)  # an absolute URI where the store serves as the proxy of blob storage's hosts
        if url.path.startswith("/api/sas/v1/token/") and (folder / ".api_down").exists():
            self.send_error(503, "Service Unavailable")
            return
        if url.path.startswith("/api/sas/v1/token/"):  # the Planetary Computer's token API: a token of an hour
            expiry = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + 3600, timezone.utc)
            se = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
            signature = (folder / ".signature").read_text()
            token = f"st=2026-01-01T00%3A00%3A00Z&se={se.replace(':', '%3A')}&sp=rl&sr=c&sig={signature}"
            body = json.dumps({"msft:expiry": se, "token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        query = parse_qs(url.query)
        expiry = datetime.fromisoformat(query.get("se", ["2000-01-01T00:00:00Z"])[0].replace("Z", "+00:00"))
        if query.get("sig") != [(folder / ".signature").read_text()] or expiry <= datetime.now(timezone.utc):
            self.send_error(403, "Server failed to authenticate the request")
            return
        path = folder / url.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        cut = folder / ".cut"
        if body and cut.exists() and cut.read_text() == path.name:  # the connection drops halfway, once
            cut.unlink()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        start, end = 0, len(data) - 1
        ranged = self.headers.get("Range")
        if ranged:
            first, _, last = ranged.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last or end), end)
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class BlobStore:
    """Files of a folder served over HTTP with ranges, in a process of its own; a request must carry the signature
    the store gave last (``sig``) and an expiry (``se``) still to come, else 403, as Azure blob storage answers an
    expired SAS."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.signature = "first"
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    @property
    def signature(self) -> str:
        """The signature the store takes now (another one is another token)."""
        return (self.folder / ".signature").read_text()

    @signature.setter
    def signature(self, value: str) -> None:
        (self.folder / ".signature").write_text(value)

    @property
    def requests(self) -> int:
        """How many requests the store answered (refusals too)."""
        log = self.folder / ".requests"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def sign(self, name: str, *, signature: str, expires_in: timedelta) -> str:
        """The signed URL of file ``name``, as a search signs an asset's href (``se`` percent-encoded, as Azure's)."""
        expiry = (datetime.now(timezone.utc) + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = f"st=2026-01-01T00%3A00%3A00Z&se={quote(expiry)}&sp=rl&sr=c&sig={signature}"
        return f"http://127.0.0.1:{self.port}/{name}?{query}"

    def close(self) -> None:
        """Stop the server."""
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def blob_store(workdir: Path) -> Iterator[BlobStore]:
    """A :class:`BlobStore` of the workdir's ``assets/`` folder, stopped afterwards."""
    store = BlobStore(workdir / "assets")
    yield store
    store.close()


def _signed_search(workdir: Path, store: BlobStore, *, signature: str, expires_in: timedelta) -> Path:
    """The workdir's scene as a STAC search saved as one ItemCollection (``items.json``), its one item's assets served
    by ``store`` and signed with ``signature`` until ``expires_in`` from now (the file written anew each time)."""
    if not (workdir / "assets" / "item.json").exists():
        write_stac_item(workdir.scene()[0], workdir / "assets", datetime="2017-02-16T10:21:01Z")
    item = json.loads((workdir / "assets" / "item.json").read_text())
    item["id"] = "S2B_MSIL1C_20170216T102101_R065_T32TPT"
    for asset in item["assets"].values():
        asset["href"] = store.sign(asset["href"], signature=signature, expires_in=expires_in)
    collection = workdir / "items.json"
    collection.unlink(missing_ok=True)
    time.sleep(0.01)  # a modification time of its own
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    return collection


def _remove(workdir: Path, collection: Path, out: str, *extra: str) -> int:
    weights = workdir.weights("dsen2cr-small-nosar")  # type: ignore[attr-defined]
    scene = f"{collection}#S2B_MSIL1C_20170216T102101_R065_T32TPT"
    argv = ["remove-clouds", "--weights", str(weights), "--s2", scene, "--out", str(workdir / out)]
    return main([*argv, "--no-progress", *WINDOWS, *extra])


def test_a_scene_stopped_when_its_token_expired_goes_on_once_the_search_is_signed_anew(
    workdir: Path, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The token expires after three batches (the store turns to another signature, as a new token is another): the
    run stops there, its journal kept, and says what happened; the search saved again (another file, other
    signatures in it) and ``--resume``: the scene goes on from its journal (it was refused: items.json changed) and
    ends with the pixels of an uninterrupted run."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    assert _remove(workdir, search, "whole.tif") == 0
    batches: list[int] = []
    predict = Predictor.__call__

    class TwoHoursLater(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> TwoHoursLater:  # type: ignore[override]
            return cls.fromtimestamp(time.time() + 7200, tz)

    def counted(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        batches.append(len(batches) + 1)
        if len(batches) == 3:  # the token expires: the store takes another, and the run's clock says so
            blob_store.signature = "second"
            monkeypatch.setattr(signed_urls, "datetime", TwoHoursLater)
        return predict(self, s2, s1)

    monkeypatch.setattr(Predictor, "__call__", counted)
    capsys.readouterr()
    assert _remove(workdir, search, "b.tif", "--journal", "on") == 2
    err = capsys.readouterr().err
    assert "the server refused the read: the URL's signature expired at " in err, err
    assert "save the search again (its assets signed anew) and run again (--resume goes on" in err
    monkeypatch.setattr(signed_urls, "datetime", datetime)
    assert (workdir / ".b.tif.journal").is_dir() and not (workdir / "b.tif").exists()
    stopped_at = len(batches)
    search = _signed_search(workdir, blob_store, signature="second", expires_in=timedelta(hours=1))
    assert _remove(workdir, search, "b.tif", "--resume") == 0, capsys.readouterr().err
    assert len(batches) - stopped_at < 12  # the batches the journal held were not predicted again
    with rasterio.open(workdir / "whole.tif") as whole, rasterio.open(workdir / "b.tif") as resumed:
        np.testing.assert_array_equal(whole.read(), resumed.read())


#: remove-clouds run by ``dsen2cr.cli.main`` in a process of its own whose store's token expires after three batches
#: (the store turns to another signature). Arguments: the store's folder, then the command line.
EXPIRING_RUN = r"""
import sys
from pathlib import Path

from dsen2cr.cli import main
from dsen2cr.predictor import Predictor

folder, argv = Path(sys.argv[1]), sys.argv[2:]
predict, batches = Predictor.__call__, []


def counted(self, s2, s1):
    batches.append(1)
    if len(batches) == 3:
        (folder / ".signature").write_text("second")
    return predict(self, s2, s1)


Predictor.__call__ = counted
sys.exit(main(argv))
"""


def test_a_read_refused_mid_run_prints_one_line_not_gdals_own(workdir: Path, blob_store: BlobStore) -> None:
    """A read the server refuses mid-run (another token: the store's signature changed) fails in GDAL's own read-ahead
    thread, where rasterio's error handler is not installed: GDAL printed its own line to the process's stderr
    (``ERROR 1: Request for 3346-3631 failed with response_code=403``) before the command's, whose reason was the
    decoder's complaint about the bytes it did not get (``ZIPDecode:Decoding error``; before that, rasterio's "Read
    failed. See previous exception for details."). The command's stderr is one line, and it gives the server's
    answer; with -v GDAL's own line stays (the stderr of a process of its own, as a user's terminal shows it)."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=2))
    weights = workdir.weights("dsen2cr-small-nosar")  # type: ignore[attr-defined]
    scene = f"{search}#S2B_MSIL1C_20170216T102101_R065_T32TPT"
    argv = ["remove-clouds", "--weights", str(weights), "--s2", scene, "--no-progress", *WINDOWS]
    for verbose, out in ((False, "a.tif"), (True, "b.tif")):
        blob_store.signature = "first"
        command = [sys.executable, "-c", EXPIRING_RUN, str(blob_store.folder), *argv, "--out", str(workdir / out)]
        env = {k: v for k, v in os.environ.items() if k not in ("CPL_LOG", "CPL_DEBUG")}  # (in-process runs set it)
        run = subprocess.run(
            [*command, *(["-v"] if verbose else [])], capture_output=True, text=True, timeout=300, env=env
        )
        assert run.returncode == 2, run.stderr
        lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
        assert "B01.tif?…: cannot read pixels from the server (" in lines[-1] and "sig=" not in lines[-1], run.stderr
        if not verbose:
            assert len(lines) == 1 and "response_code=403" in lines[0], run.stderr
        else:
            assert any(line.startswith("ERROR 1:") and "response_code=403" in line for line in lines), run.stderr


def test_a_changed_item_is_not_taken_for_a_re_signed_one(workdir: Path, blob_store: BlobStore) -> None:
    """Only the signatures may differ: an item whose asset is another file is another scene's."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    with pytest.MonkeyPatch.context() as patch:
        calls: list[int] = []
        predict = Predictor.__call__

        def stopped(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return predict(self, s2, s1)

        patch.setattr(Predictor, "__call__", stopped)
        assert _remove(workdir, search, "b.tif", "--journal", "on") == 130
    collection = json.loads(search.read_text())
    asset = collection["features"][0]["assets"]["B02"]
    (workdir / "assets" / "B02_v2.tif").write_bytes((workdir / "assets" / "B02.tif").read_bytes())
    asset["href"] = asset["href"].replace("/B02.tif?", "/B02_v2.tif?")
    search.write_text(json.dumps(collection))
    assert _remove(workdir, search, "b.tif", "--resume") == 2


def test_expired_signatures_are_refused_before_any_work(
    workdir: Path, blob_store: BlobStore, capsys: pytest.CaptureFixture
) -> None:
    """A search saved yesterday: refused with when its signatures expired, before the store is asked anything."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=-20))
    asked = blob_store.requests
    assert _remove(workdir, search, "o.tif") == 2
    err = capsys.readouterr().err
    assert "the signed URLs of its assets expired at " in err and "save the search again" in err, err
    assert blob_store.requests == asked and not (workdir / "o.tif").exists()


@pytest.mark.parametrize(
    ("href", "expiry"),
    [
        # Azure SAS (the Planetary Computer's): se, percent-encoded or not
        (
            "https://a.blob.core.windows.net/c/B02.tif?st=2023-06-01T10%3A00%3A00Z&se=2023-06-02T10%3A45%3A00Z&sig=x",
            "2023-06-02T10:45:00+00:00",
        ),
        ("https://a.blob.core.windows.net/c/B02.tif?se=2023-06-02T10:45:00Z&sig=x", "2023-06-02T10:45:00+00:00"),
        # S3 presigned (SigV4): X-Amz-Date + X-Amz-Expires seconds
        (
            "https://b.s3.amazonaws.com/B02.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20231201T235900Z"
            "&X-Amz-Expires=3600&X-Amz-Signature=ab",
            "2023-12-02T00:59:00+00:00",
        ),
        # Google Cloud Storage signed URL (V4)
        (
            "https://storage.googleapis.com/b/B02.tif?X-Goog-Date=20231201T120000Z&X-Goog-Expires=900&X-Goog-Signature=c",
            "2023-12-01T12:15:00+00:00",
        ),
        ("https://earth-search.example/B02.tif", None),  # unsigned
        ("B02.tif", None),
        ("https://a.blob.core.windows.net/c/B02.tif?se=tomorrow&sig=x", None),  # not a time: nothing known
    ],
)
def test_the_expiry_of_a_signed_url(href: str, expiry: str | None) -> None:
    """Each signing scheme's expiry, computed by hand from its query."""
    found = url_expiry(href)
    assert (found.isoformat() if found else None) == expiry


def test_url_expiry_is_timezone_aware() -> None:
    """An expiry is compared with the time now in UTC: a naive time would raise."""
    found = url_expiry("https://a.blob.core.windows.net/c/x.tif?se=2023-06-02T10%3A45%3A00Z&sig=x")
    assert found is not None and found.utcoffset() == timedelta(0)
    with pytest.raises(DSen2CRError, match="expired at 2023-06-02T10:45:00Z"):
        from dsen2cr.signed_urls import refuse_expired

        refuse_expired("item.json", ["https://a.blob.core.windows.net/c/x.tif?se=2023-06-02T10%3A45%3A00Z&sig=x"])


def _signed_s1_item(workdir: Path, store: BlobStore, *, signature: str, expires_in: timedelta) -> Path:
    """The workdir's S1 as an S1 STAC item (``s1_item.json``) whose vv and vh assets ``store`` serves, signed."""
    if not (workdir / "assets" / "vv.tif").exists():
        split_s1(workdir.scene()[1], "vv.tif", "vh.tif")
        for name in ("vv.tif", "vh.tif"):
            (workdir / name).rename(workdir / "assets" / name)
    assets = {
        key: {"href": store.sign(f"{key}.tif", signature=signature, expires_in=expires_in)} for key in ("vv", "vh")
    }
    item = {"type": "Feature", "id": "s1", "properties": {"datetime": "2017-02-16T05:12:34Z"}, "assets": assets}
    (workdir / "s1_item.json").write_text(json.dumps(item))
    return workdir / "s1_item.json"


def _rotated_at_first_batch(monkeypatch: pytest.MonkeyPatch, store: BlobStore) -> None:
    """The store takes another signature once the network runs its first batch (the token the run holds expired)."""
    predict = Predictor.__call__

    def rotated(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        store.signature = "second"
        return predict(self, s2, s1)

    monkeypatch.setattr(Predictor, "__call__", rotated)


def test_fetched_inputs_outlive_their_signatures(
    workdir: Path, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``--fetch-inputs on``: the S2 item's 13 bands and the S1 item's VV and VH are downloaded beside the output
    before the network runs; the token expiring at the first batch changes nothing: the output is the one read from
    the server as the run goes, and the copies are gone afterwards."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    s1 = _signed_s1_item(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    weights = str(workdir.weights("dsen2cr-small"))  # type: ignore[attr-defined]
    scene = f"{search}#S2B_MSIL1C_20170216T102101_R065_T32TPT"

    def run(out: str, *extra: str) -> int:
        argv = ["remove-clouds", "--weights", weights, "--s2", scene, "--s1", str(s1), "--out", str(workdir / out)]
        return main([*argv, "--no-progress", *WINDOWS, *extra])

    assert run("streamed.tif", "--fetch-inputs", "off") == 0
    _rotated_at_first_batch(monkeypatch, blob_store)
    with caplog.at_level("INFO"):
        assert run("fetched.tif", "--fetch-inputs", "on") == 0
    assert "fetched.tif: 15 remote assets downloaded beside it" in caplog.text
    with rasterio.open(workdir / "streamed.tif") as streamed, rasterio.open(workdir / "fetched.tif") as fetched:
        np.testing.assert_array_equal(streamed.read(), fetched.read())
        assert fetched.tags()["DSEN2CR_S2"] == streamed.tags()["DSEN2CR_S2"]  # the item, not a copy, is recorded
    assert not [path.name for path in workdir.iterdir() if ".tmp" in path.name]


def test_fetch_auto_downloads_what_would_expire_during_the_run(
    workdir: Path, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``auto`` on a CPU: signatures that hold 5 more minutes (the run's estimate plus 10 minutes' margin is more)
    are fetched, and the token's end at the first batch changes nothing; signatures that hold an hour are read
    from the server as the run goes."""
    _rotated_at_first_batch(monkeypatch, blob_store)
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(minutes=5))
    with caplog.at_level("INFO"):
        assert _remove(workdir, search, "soon.tif") == 0
    assert "expire in 5 min, before the network's estimated 0 min here ends: downloaded first" in caplog.text
    blob_store.signature = "first"
    caplog.clear()
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    with caplog.at_level("INFO"):
        assert _remove(workdir, search, "later.tif") == 2  # read as it goes: refused once the token changed
    assert "downloaded" not in caplog.text


def test_a_download_the_server_refuses_is_one_line(
    workdir: Path, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A signature the server no longer takes (revoked before it expired): the download names the asset and the
    server's answer; nothing is left beside the output."""
    from dsen2cr.scene import sources

    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    listed = sources.remote_assets

    def revoked(*args: object) -> list[str]:  # once the scene's checks read the headers, before the downloads
        blob_store.signature = "revoked"
        return listed(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sources, "remote_assets", revoked)
    assert _remove(workdir, search, "o.tif", "--fetch-inputs", "on") == 2
    err = capsys.readouterr().err
    assert "/B01.tif?…: cannot download it (HTTP 403" in err and "sig=" not in err, err
    assert not [path.name for path in workdir.iterdir() if path.name.startswith(".o.")]


def test_a_fetched_copy_is_named_as_the_outputs_temporaries() -> None:
    """A killed run's copies are removed by the next run on the output (:func:`remove_leftovers`): their names say
    the output and the process."""
    from dsen2cr.outputs.files import temporary_writer

    assert temporary_writer(".T33UUU.4242.ab12cd_3.tmp.tif.input3-B04.tif") == ("T33UUU.tif", 4242)


@pytest.mark.parametrize(
    ("fetch", "device", "variant", "pixels", "left", "fetched"),
    [
        ("on", "cuda", "dsen2cr-small", 100, None, True),
        ("off", "cpu", "dsen2cr", 10980**2, 60.0, False),
        ("auto", "cpu", "dsen2cr", 10980**2, 3600.0, True),  # the paper model on a full tile: hours on a CPU
        ("auto", "cpu", "dsen2cr", 10980**2, 30 * 3600.0, False),  # a token of 30 hours outlasts it
        ("auto", "cpu", "dsen2cr", 10980**2, None, False),  # unsigned
        ("auto", "cuda", "dsen2cr", 10980**2, 60.0, False),  # a GPU reads a tile within seconds of its start
        ("auto", "cpu", "dsen2cr-small", 1000**2, 1200.0, False),  # minutes' work, a token of 20 min
        ("auto", "cpu", "dsen2cr-small", 1000**2, 300.0, True),  # within the 10 min margin
    ],
)
def test_fetch_auto_by_hand(
    fetch: str, device: str, variant: str, pixels: int, left: float | None, fetched: bool
) -> None:
    """The rule, worked by hand: fetch where the token ends before the network's estimated time (2 FLOP a weight
    and pixel at 1.5e11 FLOP/s) plus 600 s."""
    import torch

    from dsen2cr.auto import resolve_fetch
    from dsen2cr.models import get_variant

    config = get_variant(variant).config
    seconds = pixels * 2 * config.build_parameter_count() / 1.5e11
    assert (variant, round(seconds)) != ("dsen2cr", 0) and (seconds > 3600) == (variant == "dsen2cr")
    assert resolve_fetch(fetch, config, torch.device(device), pixels, left) is fetched


def test_a_download_cut_short_goes_on_from_where_it_stopped(
    workdir: Path, blob_store: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection drops halfway through a band's download: it is asked again from the byte it reached (a range
    request, as GDAL's own retries are), and the scene's output is the streamed run's."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    assert _remove(workdir, search, "streamed.tif", "--fetch-inputs", "off") == 0
    (workdir / "assets" / ".cut").write_text("B04.tif")
    start = blob_store.requests
    with caplog.at_level("INFO"):
        assert _remove(workdir, search, "fetched.tif", "--fetch-inputs", "on") == 0
    assert not (workdir / "assets" / ".cut").exists()  # the cut happened
    ranged = [line for line in (workdir / "assets" / ".requests").read_text().splitlines()[start:] if "B04" in line]
    assert "/B04.tif?…: the download stopped at 2252 bytes (the connection closed early, of 4505)" in caplog.text
    with rasterio.open(workdir / "streamed.tif") as streamed, rasterio.open(workdir / "fetched.tif") as fetched:
        np.testing.assert_array_equal(streamed.read(), fetched.read())
    assert ranged


def test_messages_name_signed_urls_without_their_signature(
    workdir: Path, blob_store: BlobStore, capsys: pytest.CaptureFixture
) -> None:
    """A signature the server refuses before the run (revoked): the line names the band's URL, not its token."""
    search = _signed_search(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    blob_store.signature = "revoked"
    assert _remove(workdir, search, "o.tif") == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{blob_store.port}/B" in err and ".tif?…: cannot read S2 band" in err, err
    assert "sig=" not in err and "se=" not in err


def _pc_item(workdir: Path, store: BlobStore, *, signature: str, expires_in: timedelta) -> Path:
    """The workdir's scene as a Planetary Computer item: its assets in blob storage (``http://sentinel2l2a01.blob.core.
    windows.net/sentinel2-l2/…``, which the store serves as the proxy of that host), signed."""
    if not (workdir / "assets" / "item.json").exists():
        write_stac_item(workdir.scene()[0], workdir / "assets", datetime="2017-02-16T10:21:01Z")
    container = workdir / "assets" / "sentinel2-l2"
    container.mkdir(exist_ok=True)
    item = json.loads((workdir / "assets" / "item.json").read_text())
    for asset in item["assets"].values():
        (container / asset["href"]).write_bytes((workdir / "assets" / asset["href"]).read_bytes())
        href = store.sign(f"sentinel2-l2/{asset['href']}", signature=signature, expires_in=expires_in)
        asset["href"] = href.replace(f"127.0.0.1:{store.port}", "sentinel2l2a01.blob.core.windows.net")
    (workdir / "pc_item.json").write_text(json.dumps(item))
    return workdir / "pc_item.json"


@pytest.fixture
def planetary_computer(blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The store as the Planetary Computer: its token API (``PC_SDK_SAS_URL``) and the proxy of its blob storage's
    hosts (``http_proxy``: GDAL's curl and Python's urllib follow it); the SDK's tokens forgotten before and after."""
    sas = pytest.importorskip("planetary_computer.sas")
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{blob_store.port}/api/sas/v1/token")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{blob_store.port}")
    monkeypatch.setenv("no_proxy", "")
    sas.TOKEN_CACHE.clear()
    sas.Settings.get.cache_clear()  # the SDK reads its settings once
    yield
    sas.TOKEN_CACHE.clear()
    sas.Settings.get.cache_clear()


def test_planetary_computer_assets_whose_token_expired_are_signed_anew(
    workdir: Path, blob_store: BlobStore, planetary_computer: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An item saved yesterday (its token expired, the store now takes another signature): with the Planetary
    Computer's SDK installed (``dsen2cr[pc]``), its assets are signed anew through its token API, and the scene is
    the one of the same bands as local files."""
    blob_store.signature = "today"
    item = _pc_item(workdir, blob_store, signature="yesterday", expires_in=timedelta(hours=-20))
    weights = str(workdir.weights("dsen2cr-small-nosar"))  # type: ignore[attr-defined]
    local = ["--s2", str(workdir / "assets" / "item.json"), "--out", str(workdir / "local.tif")]
    assert main(["remove-clouds", "--weights", weights, *local, "--no-progress", *WINDOWS]) == 0
    with caplog.at_level("INFO"):
        argv = ["--s2", str(item), "--out", str(workdir / "pc.tif"), "--no-progress", *WINDOWS]
        assert main(["remove-clouds", "--weights", weights, *argv]) == 0
    assert "signed anew through the Planetary Computer's token API" in caplog.text, caplog.text
    with rasterio.open(workdir / "local.tif") as a, rasterio.open(workdir / "pc.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_without_the_sdk_an_expired_planetary_computer_item_says_how_to_sign_anew(
    workdir: Path, blob_store: BlobStore, planetary_computer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the SDK, the refusal names the extra that signs anew by itself."""
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # an import of it fails
    item = _pc_item(workdir, blob_store, signature="yesterday", expires_in=timedelta(hours=-20))
    with pytest.raises(DSen2CRError, match=r"save the search again \(its assets signed anew\), or pip install "):
        from dsen2cr.inputs import resolve_s2

        resolve_s2(str(item))


def test_a_scene_that_runs_later_than_its_check_gets_its_token_anew(
    workdir: Path, blob_store: BlobStore, planetary_computer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch reads every scene's item at its start; a scene that runs an hour later finds its token expired (the
    store takes another signature by then): it is signed anew as the scene starts, and the scene is the one of the
    same bands as local files."""
    import dsen2cr
    from dsen2cr.inputs import resolve_s2
    from dsen2cr.settings import SceneJob, SceneSettings

    item = _pc_item(workdir, blob_store, signature="first", expires_in=timedelta(minutes=30))
    product = resolve_s2(str(item))  # the batch's start: 30 minutes left, nothing signed anew
    assert all("sig=first" in path for path in product.files)
    blob_store.signature = "second"

    class AnHourLater(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> AnHourLater:  # type: ignore[override]
            return cls.fromtimestamp(time.time() + 3600, tz)

    predictor = dsen2cr.load_predictor(workdir.weights("dsen2cr-small-nosar"), device="cpu")  # type: ignore[attr-defined]
    settings = SceneSettings(tile=16, overlap=4, progress=False)
    dsen2cr.remove_clouds(
        predictor, SceneJob(str(workdir / "assets" / "item.json"), None, str(workdir / "local.tif")), settings
    )
    monkeypatch.setattr(signed_urls, "datetime", AnHourLater)
    dsen2cr.remove_clouds(
        predictor, SceneJob(str(item), None, str(workdir / "later.tif")), settings, s2_product=product
    )
    with rasterio.open(workdir / "local.tif") as a, rasterio.open(workdir / "later.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_token_api_that_does_not_answer_is_one_line(
    workdir: Path, blob_store: BlobStore, planetary_computer: None, capsys: pytest.CaptureFixture
) -> None:
    """The token API answers 503 (asked 4 times): the line says when the token expired, that it could not be got
    anew, and how to go on; nothing is written."""
    (workdir / "assets" / ".api_down").touch()
    item = _pc_item(workdir, blob_store, signature="yesterday", expires_in=timedelta(hours=-20))
    weights = str(workdir.weights("dsen2cr-small-nosar"))  # type: ignore[attr-defined]
    argv = ["remove-clouds", "--weights", weights, "--s2", str(item), "--out", str(workdir / "o.tif"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "/sentinel2-l2/B01.tif?…: its token expires at " in err, err
    assert "cannot be signed anew through the Planetary Computer's token API (" in err and "503" in err
    assert "save the search again" in err and not (workdir / "o.tif").exists()


def test_an_unsigned_planetary_computer_item_is_signed(
    workdir: Path, blob_store: BlobStore, planetary_computer: None
) -> None:
    """An item read from the Planetary Computer's STAC API without the SDK's signing (its hrefs bare, which its blob
    storage refuses): signed through the SDK as it is read, the scene is the one of the same bands as local files."""
    item_path = _pc_item(workdir, blob_store, signature="first", expires_in=timedelta(hours=1))
    item = json.loads(item_path.read_text())
    for asset in item["assets"].values():
        asset["href"] = asset["href"].partition("?")[0]
    item_path.write_text(json.dumps(item))
    weights = str(workdir.weights("dsen2cr-small-nosar"))  # type: ignore[attr-defined]
    for scene, out in ((workdir / "assets" / "item.json", "local.tif"), (item_path, "pc.tif")):
        argv = ["--s2", str(scene), "--out", str(workdir / out), "--no-progress", *WINDOWS]
        assert main(["remove-clouds", "--weights", weights, *argv]) == 0
    with rasterio.open(workdir / "local.tif") as a, rasterio.open(workdir / "pc.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_container_the_api_does_not_sign_is_read_unsigned_and_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned files of another's public container in blob storage: the token API refuses; each file is read as it
    is, and the API is asked once for the folder, not once a file."""
    pytest.importorskip("planetary_computer.sas")
    asked: list[str] = []

    def refused(sdk: object, href: str) -> str:
        asked.append(href)
        raise ValueError("403 Forbidden")

    monkeypatch.setattr(signed_urls, "_signed", refused)
    monkeypatch.setattr(signed_urls, "_UNSIGNABLE", set())
    paths = [f"/vsicurl/https://public.blob.core.windows.net/open/B0{band}.tif" for band in (2, 3, 4)]
    assert [signed_urls.fresh(path, 900.0) for path in paths] == paths
    assert len(asked) == 1


def test_a_failed_reads_reason_is_gdals_message_not_rasterios_pointer_to_it() -> None:
    """rasterio raises "Read failed. See previous exception for details." from GDAL's messages: the reason is those
    messages, outermost first, each once (none that another holds), on one line."""
    from dsen2cr.rasters import gdal_reason

    try:
        try:
            try:
                raise RuntimeError("ZIPDecode:Decoding error\nat scanline 0")
            except RuntimeError as inner:
                raise OSError("a.tif, band 1: IReadBlock failed: TIFFReadEncodedTile() failed.") from inner
        except OSError as middle:
            raise ValueError("TIFFReadEncodedTile() failed. See previous exception for details.") from middle
    except ValueError as outer:
        reason = gdal_reason(outer)
    assert (
        reason
        == "a.tif, band 1: IReadBlock failed: TIFFReadEncodedTile() failed.; ZIPDecode:Decoding error at scanline 0"
    )
    assert gdal_reason(ValueError("Read failed. See previous exception for details.")) == (
        "Read failed. See previous exception for details."
    )


def test_a_failed_read_takes_only_what_gdals_threads_said_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error GDAL's threads wrote before a read started (a retried request that then succeeded, another file's)
    is not that read's reason; one written while it ran is, the last of them, without GDAL's ``ERROR n:``."""
    from dsen2cr.gdal_messages import last_thread_error, log_position

    log = tmp_path / "gdal.log"
    log.write_text("ERROR 1: Request for 0-99 failed with response_code=503\n")
    monkeypatch.setenv("CPL_LOG", str(log))
    start = log_position()
    assert start == log.stat().st_size and last_thread_error(since=start) is None
    with log.open("a") as file:
        file.write("Warning 1: something\nERROR 1: Request for 100-199 failed with response_code=403\nERROR 4: b\n")
    assert last_thread_error(since=start) == "b"
    assert last_thread_error(since=0) == "b" and last_thread_error(since=10**9) == "b"  # a log begun anew
    monkeypatch.delenv("CPL_LOG")
    assert log_position() == 0 and last_thread_error(since=0) is None


def test_without_a_writable_temporary_folder_gdal_prints_as_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only container (no temporary file to make) runs every command as before: GDAL's threads' messages are
    not captured, nothing fails."""
    import tempfile

    from dsen2cr import gdal_messages

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(30, "Read-only file system")

    monkeypatch.delenv("CPL_LOG", raising=False)
    monkeypatch.delenv("CPL_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    gdal_messages.capture_thread_messages()
    assert "CPL_LOG" not in os.environ
