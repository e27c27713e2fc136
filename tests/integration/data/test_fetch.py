"""Downloads: failover between sources, retries, checksums and atomic writes, over real HTTP.

Every network test talks to the ``http_server`` fixture (a real server on 127.0.0.1), serving
small IDX files written here; nothing is mocked. After each failure case the destination
directory is checked for leftovers: neither the final file nor a ``*.part`` temporary may remain.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
import zlib
from pathlib import Path

import pytest

from bplab.data import mnist
from bplab.data.fetch import MIRROR_ENV, Candidate, FetchedFile, FetchPolicy, fetch_file, gunzip
from bplab.data.mnist import MnistDownload
from bplab.errors import DownloadError
from bplab.testing.scratch import data_mirror
from support.processes import unavailable

# Read before any test's monkeypatch clears BPLAB_DATA_MIRROR: the real offline mirror, if any.
REAL_MIRROR = data_mirror()

NAME = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"


# --- helpers ------------------------------------------------------------------------------------


def idx_images(n: int = 3, seed: int = 0) -> bytes:
    """An IDX image file: magic 2051, dims (n, 28, 28), then n*28*28 uint8 pixels."""
    pixels = bytes((seed * 131 + i * 7) % 256 for i in range(n * 28 * 28))
    return struct.pack(">iiii", 2051, n, 28, 28) + pixels


def idx_labels(n: int = 3, seed: int = 0) -> bytes:
    """An IDX label file: magic 2049, dim (n,), then n labels 0-9."""
    return struct.pack(">ii", 2049, n) + bytes((seed + i) % 10 for i in range(n))


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def gz(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


def policy(retries: int = 3) -> FetchPolicy:
    return FetchPolicy(retries=retries, backoff_s=0.01, timeout_s=5)


def dead_url(path: str = f"{NAME}.gz") -> str:
    """A URL on a port nothing listens on (bound to get a free port, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def leftovers(directory: Path) -> list[str]:
    """Temporary files the atomic write could have left behind (they start with a dot)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part")) if directory.exists() else []


def assert_nothing_written(dest: Path) -> None:
    assert not dest.exists(), f"{dest} must not exist after a failed download"
    assert leftovers(dest.parent) == []


@pytest.fixture(autouse=True)
def _no_local_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set BPLAB_DATA_MIRROR themselves; a value from the caller's shell must not leak in."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


CONTENT = idx_images()
DIGEST = sha256(CONTENT)


# --- fetch_file: the happy path -----------------------------------------------------------------


def test_fetch_writes_decompressed_bytes_and_reports_where_they_came_from(http_server, raw_dir):
    url = http_server.put(f"a/{NAME}.gz", gz(CONTENT))
    dest = raw_dir / NAME

    fetched = fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, dest, policy())

    assert dest.read_bytes() == CONTENT
    assert fetched == FetchedFile(NAME, dest, url, DIGEST, len(CONTENT))
    assert sorted(p.name for p in raw_dir.iterdir()) == [NAME]  # no .part temp file left
    assert http_server.requests == [f"/a/{NAME}.gz"]


def test_fetch_creates_the_destination_directory(http_server, tmp_path):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))
    dest = tmp_path / "not" / "yet" / NAME

    fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, dest, policy())

    assert dest.read_bytes() == CONTENT


def test_fetch_replaces_an_existing_file(http_server, raw_dir):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))
    dest = raw_dir / NAME
    dest.write_bytes(b"stale content from an older run")

    fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, dest, policy())

    assert dest.read_bytes() == CONTENT
    assert leftovers(raw_dir) == []


def test_local_path_candidate_is_read_directly(tmp_path, raw_dir):
    source = tmp_path / "copy.gz"
    source.write_bytes(gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(str(source), gunzip)], DIGEST, raw_dir / NAME, policy())

    assert fetched.source == str(source)
    assert (raw_dir / NAME).read_bytes() == CONTENT


# --- fetch_file: a bad source is rejected and the next one used ---------------------------------


@pytest.mark.parametrize(
    "bad_payload",
    [
        pytest.param(gz(idx_images(seed=1)), id="gzip-of-other-bytes"),
        pytest.param(gz(CONTENT)[:-1] + bytes([gz(CONTENT)[-1] ^ 0xFF]), id="gzip-with-corrupt-trailer"),
        pytest.param(b"<html>Moved</html>", id="not-gzip"),
    ],
)
def test_corrupt_first_source_is_rejected_and_second_used(http_server, raw_dir, bad_payload):
    bad = http_server.put(f"bad/{NAME}.gz", bad_payload)
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(bad, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME, policy())

    assert fetched.source == good
    assert (raw_dir / NAME).read_bytes() == CONTENT
    assert http_server.count(f"bad/{NAME}.gz") == 1  # bad bytes are not retried
    assert leftovers(raw_dir) == []


def test_checksum_mismatch_is_reported_with_both_digests(http_server, raw_dir):
    other = idx_images(seed=1)
    url = http_server.put(f"{NAME}.gz", gz(other))

    with pytest.raises(DownloadError) as caught:
        fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, raw_dir / NAME, policy())

    message = str(caught.value)
    assert f"{url}: checksum mismatch" in message
    assert sha256(other) in message and DIGEST in message
    assert_nothing_written(raw_dir / NAME)


def test_truncated_gzip_is_rejected_and_next_source_used(http_server, raw_dir):
    packed = gz(CONTENT)
    cut = http_server.put(f"cut/{NAME}.gz", packed[: len(packed) // 2])  # complete HTTP body, short gzip
    good = http_server.put(f"good/{NAME}.gz", packed)

    fetched = fetch_file(NAME, [Candidate(cut, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME, policy())

    assert fetched.source == good
    assert http_server.count(f"cut/{NAME}.gz") == 1
    assert leftovers(raw_dir) == []


def test_corrupt_deflate_body_is_rejected_and_next_source_used(http_server, raw_dir):
    packed = bytearray(gz(CONTENT))
    packed[10] = 0b111  # first deflate block: final, of the reserved type 3; header and trailer intact
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(packed[10:]), -zlib.MAX_WBITS)  # the fault this test is about
    bad = http_server.put(f"corrupt/{NAME}.gz", bytes(packed))
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(bad, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME, policy())

    assert fetched.source == good
    assert leftovers(raw_dir) == []


def test_signed_and_credentialed_urls_are_redacted_in_records_and_errors(http_server, raw_dir):
    signed = http_server.put(f"signed/{NAME}.gz", gz(CONTENT)) + "?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIA"
    fetched = fetch_file(NAME, [Candidate(signed, gunzip)], DIGEST, raw_dir / NAME, policy())
    assert (raw_dir / NAME).read_bytes() == CONTENT
    assert fetched.source == http_server.url(f"signed/{NAME}.gz")  # what the download run logs

    private = http_server.url("missing.gz").replace("http://", "http://alice:hunter2@") + "?token=t0ken"
    with pytest.raises(DownloadError) as failed:
        fetch_file(NAME, [Candidate(private, gunzip)], DIGEST, raw_dir / "other", policy(retries=1))
    message = str(failed.value)
    assert "hunter2" not in message and "t0ken" not in message and "alice" not in message
    assert "http://***@127.0.0.1:" in message


# --- credentials in a source's URL --------------------------------------------------------------

MIRROR_USER = "m1rror-user"


def test_credentials_in_a_url_are_sent_as_basic_auth_not_read_as_the_host(http_server, raw_dir):
    http_server.require_login(MIRROR_USER, "pa/ss?w#rd")
    url = http_server.put(f"private/{NAME}.gz", gz(CONTENT))
    private = url.replace("http://", f"http://{MIRROR_USER}:pa%2Fss%3Fw%23rd@")  # percent-encoded, as in a URL

    fetched = fetch_file(NAME, [Candidate(private, gunzip)], DIGEST, raw_dir / NAME, policy())

    assert (raw_dir / NAME).read_bytes() == CONTENT
    assert fetched.source == url.replace("http://", "http://***@")  # what the download run logs
    assert http_server.requests == [f"/private/{NAME}.gz"]  # one request: the login goes with it
    assert http_server.authorizations == [http_server.login]


def test_a_refused_login_fails_its_source_at_once_with_a_redacted_reason(http_server, raw_dir):
    http_server.require_login(MIRROR_USER, "the-right-one")
    url = http_server.put(f"private/{NAME}.gz", gz(CONTENT))
    wrong = url.replace("http://", f"http://{MIRROR_USER}:wr0ng-pa55@")

    with pytest.raises(DownloadError) as failed:
        fetch_file(NAME, [Candidate(wrong, gunzip)], DIGEST, raw_dir / NAME, policy(retries=3))

    message = str(failed.value)
    assert f"  - {url.replace('http://', 'http://***@')}: HTTP 401 Unauthorized" in message.splitlines()
    assert "wr0ng-pa55" not in message and MIRROR_USER not in message
    assert http_server.count(f"private/{NAME}.gz") == 1  # a refusal is not retried
    assert_nothing_written(raw_dir / NAME)


@pytest.mark.parametrize(("shape", "secret"), [
    ("http://{user}:Unenc0ded/5ecret@{host}/{path}", "Unenc0ded"),  # urllib read 'Unenc0ded' as the port
    ("http://{host}/with space/{path}", None),  # http.client refuses the path
])
def test_a_malformed_url_fails_its_source_at_once_without_quoting_it(http_server, raw_dir, shape, secret):
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))
    bad = shape.format(user=MIRROR_USER, host=good.removeprefix("http://").split("/")[0], path=f"{NAME}.gz")

    with pytest.raises(DownloadError) as failed:
        fetch_file(NAME, [Candidate(bad, gunzip)], DIGEST, raw_dir / NAME, policy(retries=3))

    reason = next(line for line in str(failed.value).splitlines() if line.startswith("  - "))
    assert "not a valid URL" in reason and "gave up" not in reason  # permanent: no retries
    assert MIRROR_USER not in reason and (secret is None or secret not in reason)
    assert http_server.requests == []
    fetched = fetch_file(NAME, [Candidate(bad, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME, policy())
    assert fetched.source == good  # the next source is tried


def test_dead_source_is_skipped(http_server, raw_dir):
    dead = dead_url()
    good = http_server.put(f"{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(dead, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME,
                         policy(retries=2))

    assert fetched.source == good
    assert (raw_dir / NAME).read_bytes() == CONTENT


# --- fetch_file: retries ------------------------------------------------------------------------


def test_http_500_twice_then_ok_succeeds_with_three_retries(http_server, raw_dir):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))
    http_server.fail(f"{NAME}.gz", status=500, times=2)

    fetched = fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, raw_dir / NAME, policy(retries=3))

    assert fetched.source == url
    assert http_server.count(f"{NAME}.gz") == 3
    assert (raw_dir / NAME).read_bytes() == CONTENT


def test_http_500_twice_with_two_retries_fails_over_to_next_source(http_server, raw_dir):
    flaky = http_server.put(f"flaky/{NAME}.gz", gz(CONTENT))
    http_server.fail(f"flaky/{NAME}.gz", status=500, times=2)
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(flaky, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME,
                         policy(retries=2))

    assert fetched.source == good
    assert http_server.count(f"flaky/{NAME}.gz") == 2
    assert http_server.count(f"good/{NAME}.gz") == 1


def test_http_429_is_retried(http_server, raw_dir):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))
    http_server.fail(f"{NAME}.gz", status=429, times=1)

    fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, raw_dir / NAME, policy(retries=2))

    assert http_server.count(f"{NAME}.gz") == 2


@pytest.mark.parametrize("status", [403, 404])
def test_client_errors_are_not_retried(http_server, raw_dir, status):
    http_server.fail(f"gone/{NAME}.gz", status=status)
    gone = http_server.url(f"gone/{NAME}.gz")
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(gone, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME,
                         policy(retries=3))

    assert fetched.source == good
    assert http_server.count(f"gone/{NAME}.gz") == 1


def test_short_transfer_is_retried_on_the_same_source(http_server, raw_dir):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))
    http_server.truncate(f"{NAME}.gz", missing=100, times=1)

    fetched = fetch_file(NAME, [Candidate(url, gunzip)], DIGEST, raw_dir / NAME, policy(retries=2))

    assert fetched.source == url
    assert http_server.count(f"{NAME}.gz") == 2
    assert (raw_dir / NAME).read_bytes() == CONTENT


def test_source_that_always_cuts_the_transfer_short_fails_over(http_server, raw_dir):
    short = http_server.put(f"short/{NAME}.gz", gz(CONTENT))
    http_server.truncate(f"short/{NAME}.gz", missing=100)
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(short, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME,
                         policy(retries=2))

    assert fetched.source == good
    assert http_server.count(f"short/{NAME}.gz") == 2
    assert leftovers(raw_dir) == []


def test_source_answering_non_http_fails_over(http_server, raw_dir):
    http_server.garbage(f"junk/{NAME}.gz")
    junk = http_server.url(f"junk/{NAME}.gz")
    good = http_server.put(f"good/{NAME}.gz", gz(CONTENT))

    fetched = fetch_file(NAME, [Candidate(junk, gunzip), Candidate(good, gunzip)], DIGEST, raw_dir / NAME,
                         policy(retries=2))

    assert fetched.source == good


# --- fetch_file: every source fails ---------------------------------------------------------------


def test_all_sources_failing_raises_download_error_naming_each_source(http_server, raw_dir, tmp_path):
    missing = http_server.url(f"missing/{NAME}.gz")
    dead = dead_url()
    http_server.fail(f"broken/{NAME}.gz", status=503)
    broken = http_server.url(f"broken/{NAME}.gz")
    wrong = http_server.put(f"wrong/{NAME}.gz", gz(idx_images(seed=2)))
    packed = gz(CONTENT)
    cut = http_server.put(f"cut/{NAME}.gz", packed[: len(packed) // 2])
    local = str(tmp_path / "nowhere" / f"{NAME}.gz")
    sources = [missing, dead, broken, wrong, cut, local]
    dest = raw_dir / NAME

    with pytest.raises(DownloadError) as caught:
        fetch_file(NAME, [Candidate(s, gunzip) for s in sources], DIGEST, dest, policy(retries=2))

    message = str(caught.value)
    assert NAME in message.splitlines()[0]
    lines = {s: next((line for line in message.splitlines() if line.strip().startswith(f"- {s}:")), "")
             for s in sources}
    assert "HTTP 404" in lines[missing]
    assert "gave up after 2 attempts" in lines[dead]
    assert "HTTP 503" in lines[broken] and "gave up after 2 attempts" in lines[broken]
    assert "checksum mismatch" in lines[wrong]
    assert "gzip" in lines[cut]
    assert "no such file" in lines[local]
    assert MIRROR_ENV in message
    assert http_server.count(f"broken/{NAME}.gz") == 2
    assert http_server.count(f"missing/{NAME}.gz") == 1
    assert_nothing_written(dest)
    assert list(raw_dir.iterdir()) == []


def test_failed_download_leaves_an_existing_file_untouched(http_server, raw_dir):
    dest = raw_dir / NAME
    dest.write_bytes(b"previous content")

    with pytest.raises(DownloadError):
        fetch_file(NAME, [Candidate(http_server.url("nothing.gz"), gunzip)], DIGEST, dest, policy())

    assert dest.read_bytes() == b"previous content"
    assert leftovers(raw_dir) == []


def test_no_candidates_raises_download_error(raw_dir):
    with pytest.raises(DownloadError, match=MIRROR_ENV):
        fetch_file(NAME, [], DIGEST, raw_dir / NAME, policy())


# --- interrupted work leaves nothing half-written ------------------------------------------------


def test_interrupt_while_decoding_writes_nothing(http_server, raw_dir):
    url = http_server.put(f"{NAME}.gz", gz(CONTENT))

    def interrupted(payload: bytes) -> bytes:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_file(NAME, [Candidate(url, interrupted)], DIGEST, raw_dir / NAME, policy())

    assert list(raw_dir.iterdir()) == []


# --- mnist.download -----------------------------------------------------------------------------


MNIST_FILES = {NAME: idx_images(n=3, seed=5), LABELS: idx_labels(n=3, seed=5)}
MNIST_SUMS = {name: sha256(content) for name, content in MNIST_FILES.items()}


def mnist_params(*mirrors: str, retries: int = 2) -> MnistDownload:
    return MnistDownload(mirrors=list(mirrors), retries=retries, backoff_s=0.01, timeout_s=5)


def serve_mnist(server, folder: str) -> str:
    for name, content in MNIST_FILES.items():
        server.put(f"{folder}/{name}.gz", gz(content))
    return server.url(f"{folder}/")


def write_mirror(root: Path) -> Path:
    """A directory laid out like the project's data mirror: ``mnist/<name>.gz``."""
    (root / "mnist").mkdir(parents=True)
    for name, content in MNIST_FILES.items():
        (root / "mnist" / f"{name}.gz").write_bytes(gz(content))
    return root


def test_mnist_download_from_http_mirror(http_server, raw_dir):
    base = serve_mnist(http_server, "exdb/mnist")

    fetched = mnist.download(raw_dir, mnist_params(base), checksums=MNIST_SUMS)

    assert [f.name for f in fetched] == [NAME, LABELS]
    for f in fetched:
        assert f.path == raw_dir / f.name
        assert f.path.read_bytes() == MNIST_FILES[f.name]
        assert f.source == http_server.url(f"exdb/mnist/{f.name}.gz")
        assert (f.sha256, f.size) == (MNIST_SUMS[f.name], len(MNIST_FILES[f.name]))
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(MNIST_FILES)
    assert mnist.read_idx(raw_dir / NAME, 2051).shape == (3, 28, 28)


def test_mnist_download_falls_over_to_second_mirror(http_server, raw_dir):
    http_server.fail(f"down/{NAME}.gz", status=500)
    http_server.fail(f"down/{LABELS}.gz", status=500)
    good = serve_mnist(http_server, "up")

    fetched = mnist.download(raw_dir, mnist_params(http_server.url("down/"), good, retries=2),
                             checksums=MNIST_SUMS)

    assert [f.source for f in fetched] == [http_server.url(f"up/{n}.gz") for n in MNIST_FILES]
    assert http_server.count(f"down/{NAME}.gz") == 2


def test_mnist_mirror_urls_are_joined_with_one_slash(http_server):
    params = mnist_params(http_server.base_url + "/with/slash/", http_server.base_url + "/without")

    locations = [c.location for c in mnist.candidates(NAME, params)]

    assert locations == [http_server.url(f"with/slash/{NAME}.gz"), http_server.url(f"without/{NAME}.gz")]


def test_mnist_all_mirrors_failing_raises_and_writes_nothing(http_server, raw_dir):
    params = mnist_params(http_server.url("nothing/"), dead_url("dead/"))

    with pytest.raises(DownloadError) as caught:
        mnist.download(raw_dir, params, checksums=MNIST_SUMS)

    message = str(caught.value)
    assert http_server.url(f"nothing/{NAME}.gz") in message
    assert f"/dead/{NAME}.gz" in message
    assert MIRROR_ENV in message
    assert list(raw_dir.iterdir()) == []


def test_local_mirror_is_tried_first_and_needs_no_network(http_server, raw_dir, tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "mirror")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    params = mnist_params(serve_mnist(http_server, "remote"))

    assert mnist.candidates(NAME, params)[0].location == str(mirror / "mnist" / f"{NAME}.gz")
    fetched = mnist.download(raw_dir, params, checksums=MNIST_SUMS)

    assert [f.source for f in fetched] == [str(mirror / "mnist" / f"{n}.gz") for n in MNIST_FILES]
    assert all((raw_dir / n).read_bytes() == c for n, c in MNIST_FILES.items())
    assert http_server.requests == []


def test_relative_local_mirror_is_resolved_from_the_repository_root(http_server, raw_dir, tmp_path, monkeypatch):
    # Under `dvc exp run --temp` and the queue, a stage runs in a copy under .dvc/tmp/exps: a
    # relative mirror must still mean the one beside the repository's own files.
    (tmp_path / ".dvc").mkdir()
    write_mirror(tmp_path / "mirror")
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv(MIRROR_ENV, "mirror")

    fetched = mnist.download(raw_dir, mnist_params(http_server.url("remote/")), checksums=MNIST_SUMS)

    assert fetched[0].source == str((tmp_path / "mirror" / "mnist" / f"{NAME}.gz").resolve())
    assert http_server.requests == []


def test_incomplete_local_mirror_falls_over_to_the_network(http_server, raw_dir, tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "mirror")
    (mirror / "mnist" / f"{LABELS}.gz").unlink()
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    base = serve_mnist(http_server, "remote")

    fetched = mnist.download(raw_dir, mnist_params(base), checksums=MNIST_SUMS)

    assert fetched[0].source == str(mirror / "mnist" / f"{NAME}.gz")
    assert fetched[1].source == http_server.url(f"remote/{LABELS}.gz")
    assert http_server.requests == [f"/remote/{LABELS}.gz"]


def test_real_mirror_label_files_match_the_official_checksums(http_server, raw_dir, monkeypatch):
    """The two small label files from the offline mirror (skipped where there is none)."""
    labels = ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"]
    mirror = REAL_MIRROR
    if mirror is None or not all((mirror / "mnist" / f"{n}.gz").is_file() for n in labels):
        unavailable("no offline data mirror with the MNIST label files")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))

    fetched = mnist.download(raw_dir, mnist_params(http_server.url("unused/")),
                             checksums={n: mnist.FILES[n] for n in labels})

    assert [f.sha256 for f in fetched] == [mnist.FILES[n] for n in labels]
    assert [f.size for f in fetched] == [60000 + 8, 10000 + 8]
    assert http_server.requests == []
    train = mnist.read_idx(raw_dir / "train-labels-idx1-ubyte", 2049)
    assert train[:5].tolist() == [5, 0, 4, 1, 9]
