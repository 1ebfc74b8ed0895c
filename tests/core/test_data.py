"""bnexp.data on the real MNIST files: parsing, checksums, download (local mirrors only), splits,
batches. No test touches the network: mirrors are a refused port, a silent socket or a local
http.server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import pytest
import torch

from bnexp.core import data
from bnexp.core.data import BatchStream, DataError, eval_batches, load_mnist, make_splits

# official per-digit counts (0..9)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
LABELS_GZ = data.FILES["train_labels"][0]  # the small file we corrupt; 60008 bytes decompressed


@pytest.fixture(scope="module")
def raw(mnist_dir: Path) -> dict[str, torch.Tensor]:
    return load_mnist(str(mnist_dir), download=False)


def _plain(mnist_dir: Path, gz_name: str) -> bytes:
    return gzip.decompress((mnist_dir / gz_name).read_bytes())


def _data_dir(tmp_path: Path, mnist_dir: Path, replace: dict[str, bytes]) -> Path:
    """A dir with symlinks to the real files, except `replace` (file name -> bytes to write)."""
    d = tmp_path / "mnist"
    d.mkdir()
    for name, _, _ in data.FILES.values():
        if name not in replace and name.removesuffix(".gz") not in replace:
            (d / name).symlink_to(mnist_dir / name)
    for name, content in replace.items():
        (d / name).write_bytes(content)
    return d


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _no_part_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".part")]


# ---- reading and verifying --------------------------------------------------------------------


def test_real_data_shapes_dtypes_counts(raw: dict[str, torch.Tensor]) -> None:
    assert raw["train_images"].shape == (60000, 28, 28)
    assert raw["test_images"].shape == (10000, 28, 28)
    assert raw["train_images"].dtype == raw["test_images"].dtype == torch.uint8
    assert raw["train_labels"].shape == (60000,) and raw["test_labels"].shape == (10000,)
    assert raw["train_labels"].dtype == raw["test_labels"].dtype == torch.int64
    assert raw["train_labels"].bincount().tolist() == TRAIN_COUNTS
    assert raw["test_labels"].bincount().tolist() == TEST_COUNTS
    # known content: a wrong header offset or axis order would shift labels and pixels
    assert raw["train_labels"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert raw["test_labels"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    corners = raw["train_images"][:, [0, 1, 26, 27]][:, :, [0, 1, 26, 27]]
    assert corners.max() == 0 and raw["train_images"].max() == 255  # blank corners, full ink
    assert raw["train_images"][0].sum() == 27525  # the first "5"


def test_plain_decompressed_files_accepted(tmp_path: Path, mnist_dir: Path) -> None:
    plain = LABELS_GZ.removesuffix(".gz")
    d = _data_dir(tmp_path, mnist_dir, {plain: _plain(mnist_dir, LABELS_GZ)})
    assert not (d / LABELS_GZ).exists()
    _assert_same(load_mnist(str(d), download=False), load_mnist(str(mnist_dir), download=False))


def test_checksum_mismatch_names_file_and_md5s(tmp_path: Path, mnist_dir: Path) -> None:
    content = bytearray(_plain(mnist_dir, LABELS_GZ))
    content[-1] = (content[-1] + 1) % 10  # one label changed: header and size still valid
    d = _data_dir(tmp_path, mnist_dir, {LABELS_GZ: gzip.compress(bytes(content), 1)})
    with pytest.raises(DataError) as exc:
        load_mnist(str(d), download=False)
    msg = str(exc.value)
    assert LABELS_GZ in msg
    assert data.FILES["train_labels"][1] in msg  # expected
    assert hashlib.md5(content).hexdigest() in msg  # got
    assert "delete" in msg and "\n" not in msg


def _truncated_idx(b: bytes) -> bytes:
    return gzip.compress(b[:-100], 1)  # valid gzip, IDX body short of what the header says


def _bad_magic(b: bytes) -> bytes:
    return gzip.compress((2051).to_bytes(4, "big") + b[4:], 1)  # images magic on a labels file


@pytest.mark.parametrize(
    ("corrupt", "expect"),
    [
        (_truncated_idx, "truncated"),
        (_bad_magic, "magic 2051, expected 2049"),
        # cut the .gz itself: gzip raises EOFError, which must come out as DataError
        (lambda b: gzip.compress(b, 1)[:5000], "truncated or not valid gzip"),
    ],
    ids=["idx-truncated", "bad-magic", "gzip-truncated"],
)
def test_corrupt_file_caught(tmp_path: Path, mnist_dir: Path, corrupt: Callable[[bytes], bytes], expect: str) -> None:
    d = _data_dir(tmp_path, mnist_dir, {LABELS_GZ: corrupt(_plain(mnist_dir, LABELS_GZ))})
    with pytest.raises(DataError, match=expect) as exc:
        load_mnist(str(d), download=False)
    assert LABELS_GZ in str(exc.value)


def test_missing_dir_without_download(tmp_path: Path) -> None:
    d = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as exc:
        load_mnist(str(d), download=False)
    assert str(d) in str(exc.value) and "BNEXP_DATA_DIR" in str(exc.value)
    assert not d.exists()  # download=False must not create it


def test_missing_file_without_download(tmp_path: Path, mnist_dir: Path) -> None:
    d = _data_dir(tmp_path, mnist_dir, {})
    (d / LABELS_GZ).unlink()
    with pytest.raises(DataError, match="missing") as exc:
        load_mnist(str(d), download=False)
    assert LABELS_GZ in str(exc.value) and "data.download=true" in str(exc.value)


def test_cache_hits_and_invalidates(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a real copy (not a symlink to read-only data) so we can change its mtime
    d = _data_dir(tmp_path, mnist_dir, {LABELS_GZ: (mnist_dir / LABELS_GZ).read_bytes()})
    reads: list[str] = []
    real_read = data._read_verified
    monkeypatch.setattr(data, "_read_verified", lambda p, k: reads.append(k) or real_read(p, k))

    first = load_mnist(str(d), download=False)
    assert len(reads) == 4
    first["train_labels"][0] = 99  # callers get copies: this must not reach the cache
    second = load_mnist(str(d), download=False)
    assert len(reads) == 4, "second load re-read the files"
    assert second["train_labels"][0] != 99

    st = os.stat(d / LABELS_GZ)
    os.utime(d / LABELS_GZ, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "replaced" file
    load_mnist(str(d), download=False)
    assert len(reads) == 8, "changed file did not invalidate the cache"


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BNEXP_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("BNEXP_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path / ".cache/bnexp/mnist")


# ---- download (local mirrors only) -----------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on 127.0.0.1 for tmp_path/www; yields (that dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _load_guarded(*args: object, **kwargs: object) -> object:
    """Run load_mnist in a thread so a missing timeout fails the test instead of hanging it."""
    result: list[object] = []

    def target() -> None:
        try:
            result.append(load_mnist(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed back to the test thread
            result.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(60)  # a hang guard, not a timing assertion: the calls below finish in well under 1 s
    assert not t.is_alive(), "load_mnist hung"
    return result[0]


def test_download_unreachable_mirror_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MIRRORS", ["http://127.0.0.1:9/"])  # port 9: connection refused
    d = tmp_path / "new" / "mnist"
    err = _load_guarded(str(d), download=True, timeout=2.0)
    assert isinstance(err, DataError)
    msg = str(err)
    assert "could not download MNIST file" in msg and "127.0.0.1:9" in msg
    assert str(d) in msg and "BNEXP_DATA_DIR" in msg
    assert d.is_dir() and _no_part_files(d)


def test_download_stalled_mirror_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # listens but never answers: the kernel completes the TCP handshake, then nothing; only the
    # timeout can end the attempt
    with socket.create_server(("127.0.0.1", 0)) as silent:
        monkeypatch.setattr(data, "MIRRORS", [f"http://127.0.0.1:{silent.getsockname()[1]}/"])
        err = _load_guarded(str(tmp_path / "mnist"), download=True, timeout=0.3)
    assert isinstance(err, DataError) and "timed out" in str(err)


def test_download_from_local_mirror(
    tmp_path: Path,
    mnist_dir: Path,
    http_root: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    raw: dict[str, torch.Tensor],
) -> None:
    www, base = http_root
    good, bad = www / "good", www / "bad"
    good.mkdir()
    bad.mkdir()
    for name, _, _ in data.FILES.values():
        (good / name).symlink_to(mnist_dir / name)
        if name != LABELS_GZ:
            (bad / name).symlink_to(mnist_dir / name)
    content = bytearray(_plain(mnist_dir, LABELS_GZ))
    content[-1] = (content[-1] + 1) % 10
    (bad / LABELS_GZ).write_bytes(gzip.compress(bytes(content), 1))
    d = tmp_path / "dl" / "mnist"

    # only the bad mirror: its labels fail verification and must never land under the real name
    monkeypatch.setattr(data, "MIRRORS", [f"{base}/bad/"])
    err = _load_guarded(str(d), download=True, timeout=5.0)
    assert isinstance(err, DataError) and LABELS_GZ in str(err) and "md5" in str(err)
    assert (d / data.FILES["train_images"][0]).is_file()  # served fine, kept
    assert not (d / LABELS_GZ).exists() and _no_part_files(d)

    # refused, then bad, then good: each file falls through to the first mirror that verifies
    monkeypatch.setattr(data, "MIRRORS", ["http://127.0.0.1:9/", f"{base}/bad", f"{base}/good/"])
    got = _load_guarded(str(d), download=True, timeout=5.0)
    assert isinstance(got, dict)
    _assert_same(got, raw)
    for name, _, _ in data.FILES.values():
        assert (d / name).read_bytes() == (mnist_dir / name).read_bytes(), name
    assert _no_part_files(d)
    # the files are really there: loading offline works
    _assert_same(load_mnist(str(d), download=False), raw)


# ---- splits and batches --------------------------------------------------------------------------


def test_make_splits(raw: dict[str, torch.Tensor]) -> None:
    s = make_splits(raw)
    assert s.train_x.shape == (55000, 1, 28, 28) and s.val_x.shape == (5000, 1, 28, 28)
    assert s.test_x.shape == (10000, 1, 28, 28)
    for x in (s.train_x, s.val_x, s.test_x):
        assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
    for y in (s.train_y, s.val_y, s.test_y):
        assert y.dtype == torch.int64
    # TF1 reader: validation is the FIRST 5000 training images, train the rest
    assert torch.equal(s.val_x[:, 0], raw["train_images"][:5000].float() / 255)
    assert torch.equal(s.val_y, raw["train_labels"][:5000])
    assert torch.equal(s.train_x[:, 0], raw["train_images"][5000:].float() / 255)
    assert torch.equal(s.train_y, raw["train_labels"][5000:])
    assert torch.equal(s.test_x[:, 0], raw["test_images"].float() / 255)
    assert torch.equal(s.test_y, raw["test_labels"])

    small = make_splits(raw, limit_train=100, limit_val=50, limit_test=20)
    assert (len(small.train_x), len(small.val_x), len(small.test_x)) == (100, 50, 20)
    assert torch.equal(small.train_x, s.train_x[:100]) and torch.equal(small.val_y, s.val_y[:50])
    assert torch.equal(small.test_y, s.test_y[:20])

    moved = small.to("cpu")
    assert isinstance(moved, data.Splits) and torch.equal(moved.val_x, small.val_x)


def _indices(stream: BatchStream, n_batches: int) -> list[list[int]]:
    return [xb.tolist() for xb, _ in islice(stream, n_batches)]


def test_batch_stream_deterministic_per_seed() -> None:
    x = torch.arange(100)
    assert _indices(BatchStream(x, x, 8, seed=1), 30) == _indices(BatchStream(x, x, 8, seed=1), 30)
    assert _indices(BatchStream(x, x, 8, seed=1), 30) != _indices(BatchStream(x, x, 8, seed=2), 30)
    stream = BatchStream(x, x, 8, seed=3)
    assert _indices(stream, 30) == _indices(stream, 30)  # a fresh iter() restarts the sequence


def test_batch_stream_full_batches_and_epochs() -> None:
    n = 10
    x = torch.arange(n)
    y = x * 7  # pairs must stay aligned through the shuffle
    rng_before = torch.random.get_rng_state()
    batches = list(islice(BatchStream(x, y, 4, seed=0), 15))  # 60 samples = 6 epochs
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # own generator only

    assert all(len(xb) == 4 for xb, _ in batches)  # full, also across epoch boundaries
    assert all(torch.equal(yb, xb * 7) for xb, yb in batches)
    flat = torch.cat([xb for xb, _ in batches]).tolist()
    epochs = [flat[i : i + n] for i in range(0, len(flat), n)]
    for e in epochs:
        assert sorted(e) == list(range(n))  # each sample exactly once per epoch
    assert epochs[0] != list(range(n))  # shuffled
    assert len({tuple(e) for e in epochs}) > 1  # a new permutation each epoch

    # batch larger than the dataset: still full batches, still whole epochs
    flat = torch.cat([xb for xb, _ in islice(BatchStream(x[:3], y[:3], 8, seed=0), 3)]).tolist()
    assert all(sorted(flat[i : i + 3]) == [0, 1, 2] for i in range(0, 24, 3))
    assert not hasattr(BatchStream, "__len__")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_stream_on_gpu() -> None:
    x = torch.arange(50)
    on_cpu = list(islice(BatchStream(x, x, 8, seed=5), 10))
    on_gpu = list(islice(BatchStream(x.cuda(), x.cuda(), 8, seed=5), 10))
    for (xc, _), (xg, yg) in zip(on_cpu, on_gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda and torch.equal(xg.cpu(), xc)


def test_eval_batches() -> None:
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    batches = eval_batches(x, y, 4)
    assert [len(xb) for xb, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([xb for xb, _ in batches]), x)
    assert torch.equal(torch.cat([yb for _, yb in batches]), y)
    # views into the original storage, not copies
    assert all(xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for xb, _ in batches)
