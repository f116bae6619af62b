"""``dsen2cr data download`` against a server this test starts on 127.0.0.1 (never a real host): Range resume
after a cut connection and a 503, byte-identical unpacked tree, nothing left behind, the split in files.csv,
and the bad-input cases."""

from __future__ import annotations

import csv
import filecmp
import http.server
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import default_sigint
from dsen2cr.cli import main
from dsen2cr.data import download

SEASONS = ["spring", "winter"]


class _Server(http.server.ThreadingHTTPServer):
    """Serves the archives in ``folder`` with Range support; ``faults`` lists what to do to the next requests."""

    folder: Path
    faults: list[str]
    seen: list[dict[str, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        """Quiet."""

    def do_HEAD(self) -> None:
        """The archive's length, or 404."""
        path = self.server.folder / self.path.rsplit("=", 1)[-1]
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()

    def do_GET(self) -> None:
        """One archive, whole or from a Range offset, possibly with an injected fault."""
        self.server.seen.append({"path": self.path, "range": self.headers.get("Range", "")})
        name = self.path.rsplit("=", 1)[-1]
        path = self.server.folder / name
        if not path.is_file():
            self.send_error(404)
            return
        fault = self.server.faults.pop(0) if self.server.faults else ""
        if fault == "503":
            self.send_error(503)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if fault == "slow":  # a slow link: the client can be killed mid-transfer
            for start in range(0, len(body), 512):
                self.wfile.write(body[start : start + 512])
                self.wfile.flush()
                time.sleep(0.05)
            return
        if fault == "trickle":  # a server that keeps the connection alive with a few bytes at a time
            for start in range(0, min(len(body), 2000), 16):
                self.wfile.write(body[start : start + 16])
                self.wfile.flush()
                time.sleep(0.1)
            return
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-body
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    """Archives of a small synthetic release tree (two seasons x three modalities) behind a local server."""
    from dsen2cr.data.synth import write_synthetic_dataset

    source = tmp_path / "source"
    write_synthetic_dataset(source, 8, size=32, seed=1)
    archives = tmp_path / "archives"
    archives.mkdir()
    for season in SEASONS:
        for modality in download.MODALITIES:
            archive = download.Archive(season, modality)
            with tarfile.open(archives / archive.name, "w:gz") as tar:
                tar.add(source / archive.top, arcname=archive.top)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.folder, httpd.faults, httpd.seen = archives, [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.source = source  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/download?path=/&files="


def _argv(server: _Server, out: Path, *extra: str) -> list[str]:
    return [
        "data",
        "download",
        "--out",
        str(out),
        "--seasons",
        *SEASONS,
        "--base-url",
        _url(server),
        "--no-progress",
        *extra,
    ]


def test_download_resumes_verifies_unpacks_and_indexes(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "RETRIES", 3)
    server.faults = ["cut", "", "503"]  # first archive cut mid-body then resumed; a 503 on the next request
    out = tmp_path / "SEN12MS-CR"
    assert main(_argv(server, out)) == 0
    first = [s for s in server.seen if s["path"].endswith(download.Archive("spring", "s1").name)]
    assert first[0]["range"] == "" and first[1]["range"].startswith("bytes=") and first[1]["range"] != "bytes=0-"
    for season in SEASONS:
        for modality in download.MODALITIES:
            top = download.Archive(season, modality).top
            comparison = filecmp.dircmp(server.source / top, out / top)  # type: ignore[attr-defined]
            assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
            for sub in comparison.subdirs.values():
                assert not sub.diff_files and not sub.left_only
    assert not (out / download.DOWNLOADS).exists()  # no archive, no partial file
    assert not list(out.glob(".unpack-*"))
    rows = list(csv.reader((out / "files.csv").open(), delimiter="\t"))
    assert len(rows) == 4  # 2 seasons x 2 patches, each a full triplet
    assert {row[0] for row in rows} == {"1"}  # the tree's ROIs (spring 1, winter 4) are in neither held-out list
    assert "ROIs1158_spring/17" in (out / "val_rois.txt").read_text().split()
    # a rerun finds everything in place and fetches nothing
    count = len(server.seen)
    assert main(_argv(server, out)) == 0
    assert len(server.seen) == count


def test_the_split_is_the_common_one(tmp_path: Path) -> None:
    assert main(["data", "splits", "--out", str(tmp_path)]) == 0
    val = (tmp_path / "val_rois.txt").read_text().split()
    test = (tmp_path / "test_rois.txt").read_text().split()
    assert len(val) == 10 and len(test) == 10 and not set(val) & set(test)
    assert "ROIs2017_winter/22" in val and "ROIs1158_spring/106" in test and "ROIs1970_fall/139" in test


@pytest.mark.parametrize(
    ("extra", "setup", "message"),
    [
        (["--seasons", "monsoon"], None, "unknown season 'monsoon'"),
        (["--modalities", "s3"], None, "unknown modality 's3'"),
        ([], "missing", "answered 404"),
        ([], "full", "GiB free"),
        ([], "file", "exists and is not a folder"),
    ],
    ids=["unknown season", "unknown modality", "404", "no free space", "--out is a file"],
)
def test_bad_download_input(
    server: _Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    setup: str | None,
    message: str,
) -> None:
    out = tmp_path / "out"
    argv = _argv(server, out)
    if setup == "missing":
        (server.folder / download.Archive("spring", "s1").name).unlink()
    if setup == "full":
        import collections

        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    if setup == "file":
        out.write_text("not a folder")
    argv = [*argv[: argv.index("--seasons")], *extra] if extra else argv
    if extra:
        argv += ["--base-url", _url(server), "--no-progress"] + (
            ["--seasons", *SEASONS] if "--seasons" not in extra else []
        )
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and message in err[0], err


def test_parallel_jobs_and_a_killed_process_resume(server: _Server, tmp_path: Path) -> None:
    """--jobs 3 fetches several archives at once; a process killed with SIGKILL mid-transfer leaves a partial
    file that the rerun resumes with a Range request, and the tree ends complete."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "SEN12MS-CR"
    server.faults = ["slow"] * 6
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", *_argv(server, out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    partials: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        partials = [p for p in (out / download.DOWNLOADS).glob("*.part") if _size(p) > 0]
        if partials:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and partials, "the download ended before it could be killed"
    killed_at = {p.name.removesuffix(".part"): _size(p) for p in partials}
    server.faults = []
    assert main([*_argv(server, out), "--jobs", "3"]) == 0
    resumed = [s for s in server.seen if s["range"] and any(s["path"].endswith(n) for n in killed_at)]
    assert resumed and all(int(s["range"][6:-1]) > 0 for s in resumed)
    assert len((out / "files.csv").read_text().splitlines()) == 4
    assert not (out / download.DOWNLOADS).exists()
    assert os.listdir(out / download.Archive("spring", "s1").top)


def _size(path: Path) -> int:
    """The size of a file that may be renamed away meanwhile (0 then)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_a_corrupt_archive_is_fetched_again_once_then_refused(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    archive = server.folder / download.Archive("spring", "s1").name
    archive.write_bytes(archive.read_bytes()[:-40])  # truncated: the server serves it whole, the tar is broken
    out = tmp_path / "out"
    assert main(_argv(server, out)) == 2
    err = capsys.readouterr().err
    assert "warning: ROIs1158_spring_s1.tar.gz: the archive is corrupt; fetching it again" in err
    assert "corrupt twice in a row" in err
    gets = [s for s in server.seen if s["path"].endswith(archive.name)]
    assert len(gets) == 2 and not (out / "ROIs1158_spring_s1").exists()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_download_from_a_trickling_server_at_once(
    server: _Server, tmp_path: Path, signum: int, status: int
) -> None:
    """SIGTERM or Ctrl-C while a worker reads a trickling server ends the process within seconds (it waited
    for the worker's retries: 246 s and 92 s), with its status, and a rerun resumes from the partial file."""
    server.faults[:] = ["trickle"] * 12
    out = tmp_path / "data"
    command = [sys.executable, "-m", "dsen2cr.cli", *_argv(server, out, "--modalities", "s1")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while not any((out / download.DOWNLOADS).glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # some bytes arrive
    start = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - start < 5, err.decode()
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err
    server.faults.clear()
    assert main(_argv(server, out, "--modalities", "s1")) == 0


def test_an_unreachable_server_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    argv = ["data", "download", "--out", str(out), "--seasons", "spring", "--modalities", "s1", "--no-progress"]
    assert main([*argv, "--base-url", "http://127.0.0.1:9/files="]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the server" in err and "--base-url" in err
    assert not out.exists()


def test_a_download_of_some_modalities_says_what_the_file_list_lacks(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Downloading one modality at a time is natural (S2 archives are 30-68 GB): the S1 alone used to end in an
    empty files.csv, announced as the file list. Now a season without all three modalities is named with the
    command that completes it, an empty file list is not written, and the run that completes the tree indexes
    it."""
    out = tmp_path / "data"
    assert main(_argv(server, out, "--modalities", "s1")) == 0
    captured = capsys.readouterr()
    assert not (out / "files.csv").exists()
    assert "not indexed: no season has all of s1, s2 and s2_cloudy yet" in captured.out, captured.out
    for season in SEASONS:
        assert f"warning: {download.SEASONS[season]}: s2, s2_cloudy not downloaded yet" in captured.err
    assert f"dsen2cr data download --out {out} --seasons {' '.join(SEASONS)} --modalities s2 s2_cloudy" in captured.err
    # the first season completed: indexed, and the other one named again
    first = [*_argv(server, out, "--modalities", "s2", "s2_cloudy")]
    first[first.index("--seasons") + 1 : first.index("--seasons") + 1 + len(SEASONS)] = SEASONS[:1]
    assert main(first) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader((out / "files.csv").open(), delimiter="\t"))
    assert len(rows) == 2 and all(row[4].startswith(download.SEASONS[SEASONS[0]]) for row in rows), rows
    assert f"warning: {download.SEASONS[SEASONS[1]]}: s2, s2_cloudy not downloaded yet" in captured.err
    assert f"--seasons {SEASONS[1]} --modalities s2 s2_cloudy" in captured.err
    assert main(_argv(server, out, "--modalities", "s2", "s2_cloudy")) == 0
    assert len(list(csv.reader((out / "files.csv").open(), delimiter="\t"))) == 4
    assert "not downloaded yet" not in capsys.readouterr().err
