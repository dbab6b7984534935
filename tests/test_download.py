"""Downloading with checksum verification, against a local HTTP server only.

Every test passes its mirrors explicitly, so nothing here touches the internet.
Most tests use a tiny fake dataset registered for the test; one fetches the
real MNIST from the shared folder through HTTP.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, find_mnist, run_pnn
from pnn_mpi.common.errors import UserError
from pnn_mpi.data import datasets, idx
from pnn_mpi.data.datasets import DatasetSpec
from pnn_mpi.data.download import download

BASENAMES = list(datasets.DATASETS["mnist"].files.values())


def real_mnist_dir() -> Path | None:
    return find_mnist()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail loudly if any code path tries to reach a host other than 127.0.0.1."""
    import urllib.parse
    import urllib.request

    real_urlopen = urllib.request.urlopen

    def guarded(request, *args, **kwargs):
        url = request.full_url if hasattr(request, "full_url") else request
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", f"network access: {url}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a scratch root; yields (root, url)."""
    root = tmp_path_factory.mktemp("site")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dead_url():
    """A URL on a port nobody listens on: connection refused, instantly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def tiny(tmp_path, monkeypatch, site):
    """A fake 'tiny' dataset: good copies in <site>/good, a bad image file in <site>/bad."""
    root, url = site
    good, bad = root / "good", root / "bad"
    if not good.exists():
        rng = np.random.default_rng(5)
        good.mkdir()
        bad.mkdir()
        for b in BASENAMES:
            shape = (20, 4, 4) if "images" in b else (20,)
            data = rng.integers(0, 10, shape, dtype=np.uint8)
            idx.write_idx(good / f"{b}.gz", data)
            data.flat[3] += 1  # same size, one value changed
            idx.write_idx(bad / f"{b}.gz", data)
    spec = DatasetSpec(
        name="tiny",
        title="tiny test data",
        files=dict(datasets.DATASETS["mnist"].files),
        md5={b: idx.payload_md5(good / f"{b}.gz") for b in BASENAMES},
        mirrors=("http://invalid.example/never-used/",),
    )
    monkeypatch.setitem(datasets.DATASETS, "tiny", spec)
    return spec, good, f"{url}/good/", f"{url}/bad/", f"{url}/nothing-here/"


def assert_clean(dest: Path, names: set[str]) -> None:
    """Exactly these files, no temporaries left behind."""
    assert {p.name for p in dest.iterdir()} == names


# --- basics -----------------------------------------------------------------------


def test_download_from_http(tmp_path, tiny):
    spec, _, good_url, _, _ = tiny
    out = io.StringIO()
    dest = download("tiny", tmp_path / "d", [good_url], out=out)
    assert dest == tmp_path / "d"
    datasets.verify_files(spec, dest)
    assert_clean(dest, {f"{b}.gz" for b in BASENAMES})
    text = out.getvalue()
    assert "MD5 ok" in text and "\r" not in text
    assert len(text.splitlines()) <= 2 * len(BASENAMES) + 1  # "a few lines at most"


def test_default_dest_is_cwd_data(tmp_path, tiny, monkeypatch):
    _, _, good_url, _, _ = tiny
    monkeypatch.chdir(tmp_path)
    assert download("tiny", mirrors=[good_url], out=io.StringIO()) == tmp_path / "data" / "tiny"
    assert datasets.locate("tiny", env={}, cwd=tmp_path, home=tmp_path) == tmp_path / "data" / "tiny"


def test_progress_redrawn_on_a_tty(tmp_path, tiny):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    download("tiny", tmp_path / "a", [tiny[3], tiny[2]], out=out)  # bad mirror first
    text = out.getvalue()
    assert "\r" in text and "100%" in text and "MD5 ok" in text
    # Each failure message starts on a line of its own, not after a progress line.
    assert all(line.startswith(("train", "t10k")) for line in text.split("\n") if "failed" in line)


def test_already_present_files_are_skipped(tmp_path, tiny, dead_url):
    spec, good, good_url, _, _ = tiny
    download("tiny", tmp_path, [good_url], out=io.StringIO())
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    out = io.StringIO()
    download("tiny", tmp_path, [dead_url], out=out)  # would fail if it fetched anything
    assert out.getvalue().count("already present, MD5 ok; skipping") == 4
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_bad_existing_file_is_replaced(tmp_path, tiny):
    spec, good, good_url, _, _ = tiny
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"garbage")  # raw shadows the .gz
    out = io.StringIO()
    download("tiny", tmp_path, [good_url], out=out)
    assert "present but bad" in out.getvalue()
    assert_clean(tmp_path, {f"{b}.gz" for b in BASENAMES})
    datasets.verify_files(spec, tmp_path)


# --- mirrors ------------------------------------------------------------------------


def test_first_mirror_dead_second_good(tmp_path, tiny, dead_url):
    spec, _, good_url, _, missing_url = tiny
    out = io.StringIO()
    download("tiny", tmp_path, [dead_url, missing_url, good_url], out=out)
    datasets.verify_files(spec, tmp_path)
    text = out.getvalue()
    assert f"mirror {dead_url} failed" in text and "refused" in text.lower()
    assert f"mirror {missing_url} failed: HTTP 404" in text


def test_corrupt_mirror_rejected_next_used(tmp_path, tiny):
    spec, _, good_url, bad_url, _ = tiny
    out = io.StringIO()
    download("tiny", tmp_path, [bad_url, good_url], out=out)
    assert out.getvalue().count(f"mirror {bad_url} failed: checksum mismatch") == 4
    datasets.verify_files(spec, tmp_path)
    assert_clean(tmp_path, {f"{b}.gz" for b in BASENAMES})


def test_truncated_gzip_on_mirror_rejected(tmp_path, tiny, site):
    spec, good, good_url, _, _ = tiny
    root, url = site
    cut = root / "cut"
    cut.mkdir(exist_ok=True)
    for b in BASENAMES:
        blob = (good / f"{b}.gz").read_bytes()
        (cut / f"{b}.gz").write_bytes(blob[: len(blob) // 2])
    out = io.StringIO()
    download("tiny", tmp_path, [f"{url}/cut/", good_url], out=out)
    assert "gzip stream cut short" in out.getvalue()
    assert_clean(tmp_path, {f"{b}.gz" for b in BASENAMES})


def test_every_mirror_bad(tmp_path, tiny, dead_url):
    _, _, _, bad_url, missing_url = tiny
    mirrors = [dead_url, missing_url, bad_url, "unsupported://x/"]
    with pytest.raises(UserError) as info:
        download("tiny", tmp_path, mirrors, out=io.StringIO())
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("cannot fetch train-images-idx3-ubyte of tiny; every mirror failed")
    for m in mirrors:
        assert f"{m}: " in msg
    assert "HTTP 404" in msg and "checksum mismatch" in msg and "unsupported URL scheme" in msg
    assert_clean(tmp_path, set())


def test_unwritable_dest(tmp_path, tiny):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="cannot write"):
        download("tiny", tmp_path / "file", [tiny[2]], out=io.StringIO())


# --- local mirrors -------------------------------------------------------------------


def test_folder_mirror_with_raw_and_gz(tmp_path, tiny):
    spec, good, _, _, _ = tiny
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for b in BASENAMES[:2]:  # two raw, two gzip
        (mirror / b).write_bytes(gzip.decompress((good / f"{b}.gz").read_bytes()))
    for b in BASENAMES[2:]:
        (mirror / f"{b}.gz").write_bytes((good / f"{b}.gz").read_bytes())
    dest = download("tiny", tmp_path / "d", [tmp_path / "empty", str(mirror)], out=io.StringIO())
    assert_clean(dest, set(BASENAMES[:2]) | {f"{b}.gz" for b in BASENAMES[2:]})
    datasets.verify_files(spec, dest)


def test_file_url_mirror(tmp_path, tiny):
    spec, good, _, _, _ = tiny
    dest = download("tiny", tmp_path, [good.as_uri()], out=io.StringIO())
    datasets.verify_files(spec, dest)


# --- the real thing, from the shared folder over HTTP ------------------------------


def test_real_mnist_over_http(tmp_path, site):
    folder = real_mnist_dir()
    if folder is None:
        pytest.skip("real MNIST not found: set PNN_MPI_DATA")
    if any(not (folder / f"{b}.gz").is_file() for b in BASENAMES):
        pytest.skip("the shared MNIST folder holds raw files; mirrors serve .gz")
    root, url = site
    link = root / "real-mnist"
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    dest = download("mnist", tmp_path, [f"{url}/real-mnist/"], out=io.StringIO())
    datasets.verify_files(datasets.get_spec("mnist"), dest)
    assert_clean(dest, {f"{b}.gz" for b in BASENAMES})


# --- issue 11: what a site admin and a user behind a firewall need --------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_downloaded_files_follow_the_umask(tmp_path, tiny, umask, mode):
    """A copy an admin fetches under umask 022 is readable by every user (mkstemp alone gives 0600)."""
    old = os.umask(umask)
    try:
        dest = download("tiny", tmp_path / "d", [tiny[2]], out=io.StringIO())
    finally:
        os.umask(old)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in dest.iterdir()} == {oct(mode)}


def test_failure_names_the_next_steps(tmp_path, tiny, dead_url, monkeypatch):
    monkeypatch.setenv("PNN_MPI_DATA", str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        download("tiny", tmp_path / "d", [dead_url], out=io.StringIO())
    msg = str(info.value)
    assert "\n" not in msg and "--mirror URL|DIR" in msg and "set PNN_MPI_DATA" in msg
    for folder in datasets.candidate_dirs("tiny"):
        assert str(folder) in msg


def test_custom_is_not_offered_for_download():
    proc = run_pnn("download", "--dataset", "custom")
    assert proc.returncode == 2 and "invalid choice: 'custom'" in proc.stderr
    assert "custom" not in run_pnn("download", "--help").stdout


def test_make_train_passes_mirrors_to_download():
    proc = subprocess.run(["make", "-n", "data", "MIRROR=/srv/mnist https://example.org/mnist/"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "download --dataset mnist --if-missing --mirror /srv/mnist --mirror https://example.org/mnist/" in proc.stdout
