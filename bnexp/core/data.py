"""MNIST: IDX reading, checksums, download, splits, batches.

`load_mnist()` finds the four standard files (gzipped or plain) in a directory, downloads the
missing ones from `MIRRORS` if allowed, and checks every file's *decompressed* MD5 and size: our
copies are recompressed, so the .gz checksums that download tools publish would not match; the
content ones do.
Parsed tensors are cached in-process, so a sweep or a test session reads and hashes the 55 MB once.

`make_splits()` follows TF1's old MNIST reader (the seed's): the first 5000 training images are the
validation set, the other 55000 the training set. `BatchStream` mirrors its `next_batch`: shuffled,
a new permutation every epoch, every batch full across epoch boundaries.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from bnexp.cli import UsageError


class DataError(UsageError):
    """A one-line, user-facing data problem whose message names the fix."""


# key -> (file name as published, MD5 of the decompressed content, decompressed size in bytes)
FILES: dict[str, tuple[str, str, int]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb", 47040016),
    "train_labels": ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624", 60008),
    "test_images": ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea", 7840016),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637", 10008),
}

# tried in order; LeCun's own site is last because it now often refuses downloads
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

VAL_SIZE = 5000  # TF1 read_data_sets(validation_size=5000): the first 5000 training images

_IDX_MAGIC = {3: 2051, 1: 2049}  # ndim -> magic (0x0803 images, 0x0801 labels; uint8 payload)
_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}
_CACHE_MAX = 4  # tests load from several tmp dirs; keep the cache from growing without bound
_LOCK = threading.Lock()  # optuna n_jobs > 1 runs trials in threads: read/download once


def default_data_dir() -> str:
    """$BNEXP_DATA_DIR if set (and not empty), else ~/.cache/bnexp/mnist."""
    env = os.environ.get("BNEXP_DATA_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "bnexp", "mnist")


def load_mnist(data_dir: str | None = None, download: bool = True, timeout: float = 20.0) -> dict[str, torch.Tensor]:
    """Return the verified MNIST arrays, downloading missing files first if `download`.

    Keys: train_images uint8 (60000, 28, 28), train_labels int64 (60000,),
    test_images uint8 (10000, 28, 28), test_labels int64 (10000,). `timeout` (seconds) bounds the
    connect and every read of a download attempt, so a dead or stalled mirror fails, not hangs.
    """
    root = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    with _LOCK:
        if not os.path.isdir(root):
            if os.path.exists(root):
                raise DataError(f"data dir {root} is not a directory; set data.dir=... or BNEXP_DATA_DIR")
            if not download:
                raise DataError(
                    f"data dir {root} does not exist; set data.dir=... or BNEXP_DATA_DIR, or data.download=true"
                )
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as e:
                raise DataError(f"cannot create data dir {root} ({e}); set data.dir=... or BNEXP_DATA_DIR") from None

        paths = {key: _find(root, name) for key, (name, _, _) in FILES.items()}
        for key, path in paths.items():
            if path is None:
                name = FILES[key][0]
                if not download:
                    raise DataError(
                        f"MNIST file {name} is missing from {root}; put the four files there, "
                        "set data.dir=... or BNEXP_DATA_DIR, or data.download=true"
                    )
                paths[key] = _download(root, key, timeout)

        # a replaced or re-downloaded file changes its mtime/inode/size, so a stale entry never hits
        stats = tuple((p, s.st_mtime_ns, s.st_size, s.st_ino) for p in paths.values() for s in [os.stat(p)])
        cache_key = (root, stats)
        if cache_key not in _CACHE:
            arrays = {key: _read_verified(path, key) for key, path in paths.items()}
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))  # oldest first (dicts keep insertion order)
            _CACHE[cache_key] = arrays
        # clones: a caller that edits its tensors in place must not corrupt the next caller's data
        return {key: t.clone() for key, t in _CACHE[cache_key].items()}


def _find(root: str, gz_name: str) -> str | None:
    """The .gz file if present, else an already-decompressed one of the plain name."""
    for name in (gz_name, gz_name.removesuffix(".gz")):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def _read_verified(path: str, key: str) -> torch.Tensor:
    """Read one IDX file (gzipped or not), check header, size and MD5; return its tensor."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e}); fix its permissions or set data.dir=...") from None
    return _parse_verified(raw, path, key, f"delete {path} to re-download it, or set data.dir=...")


def _parse_verified(raw: bytes, path: str, key: str, fix: str) -> torch.Tensor:
    """Decompress if gzipped, check IDX header, size and MD5; `fix` ends every error message."""
    _, want_md5, want_size = FILES[key]
    if raw[:2] == b"\x1f\x8b":  # gzip magic; IDX files start with two zero bytes
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path} is truncated or not valid gzip ({e}); {fix}") from None

    ndim = 3 if key.endswith("images") else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its IDX header; {fix}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path} has IDX magic {magic}, expected {_IDX_MAGIC[ndim]}; {fix}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(raw) < header + count:
        raise DataError(
            f"{path} is truncated: header says shape {tuple(dims)} ({header + count} bytes), file has {len(raw)}; {fix}"
        )
    if len(raw) != want_size:
        raise DataError(f"{path} has {len(raw)} bytes decompressed, expected {want_size}; {fix}")
    got_md5 = hashlib.md5(raw).hexdigest()
    if got_md5 != want_md5:
        raise DataError(f"{path}: md5 of decompressed content is {got_md5}, expected {want_md5}; {fix}")

    # bytearray: torch.frombuffer warns on read-only bytes, and the tensor must own its memory
    t = torch.frombuffer(bytearray(memoryview(raw)[header:]), dtype=torch.uint8).view(*dims)
    return t.long() if ndim == 1 else t


def _download(root: str, key: str, timeout: float) -> str:
    """Fetch one file from the first mirror that serves verified content; return its path."""
    name = FILES[key][0]
    dest = os.path.join(root, name)
    last_error = "no mirrors configured"
    for mirror in MIRRORS:
        url = mirror.rstrip("/") + "/" + name
        try:
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
        except OSError as e:
            raise DataError(f"cannot write to data dir {root} ({e}); set data.dir=... or BNEXP_DATA_DIR") from None
        try:
            # timeout applies to connect and to each blocking read, so a stall cannot hang us
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            with open(tmp, "rb") as f:
                # verify before the file takes its real name; a bad mirror just moves us on
                _parse_verified(f.read(), url, key, "trying the next mirror")
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
            os.replace(tmp, dest)  # atomic: readers see no file or a whole, verified one
            return dest
        except (OSError, http.client.HTTPException, DataError) as e:
            last_error = f"{url}: {e}"
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(
        f"could not download MNIST file {name} from any mirror (offline?): {last_error}; "
        f"put the four files in {root} or set BNEXP_DATA_DIR"
    )


@dataclass
class Splits:
    """Images float32 in [0, 1], shape (N, 1, 28, 28); labels int64, shape (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> Splits:
        return Splits(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def make_splits(
    raw: dict[str, torch.Tensor],
    limit_train: int | None = None,
    limit_val: int | None = None,
    limit_test: int | None = None,
) -> Splits:
    """Split as TF1's reader: val = first 5000 training images, train = the rest; limits take the
    first N of each split (quick runs, tests)."""
    n_train = len(raw["train_images"])
    if n_train <= VAL_SIZE:
        raise ValueError(f"need more than {VAL_SIZE} training images, got {n_train}")
    for name, limit in (
        ("limit_train", limit_train),
        ("limit_val", limit_val),
        ("limit_test", limit_test),
    ):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {limit}")

    def prep(images: torch.Tensor, labels: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, ...]:
        images, labels = images[:limit], labels[:limit]  # [:None] keeps all
        # (N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1]; convert only what we keep
        x = images.unsqueeze(1).to(torch.float32).div_(255.0)
        return x, labels.clone()

    train_x, train_y = prep(raw["train_images"][VAL_SIZE:], raw["train_labels"][VAL_SIZE:], limit_train)
    val_x, val_y = prep(raw["train_images"][:VAL_SIZE], raw["train_labels"][:VAL_SIZE], limit_val)
    test_x, test_y = prep(raw["test_images"], raw["test_labels"], limit_test)
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y)


class BatchStream:
    """Infinite iterable of (x, y) training batches, drawn by indexing whole tensors.

    No per-sample Python work. Shuffled from `seed` with its own CPU torch.Generator (the global
    RNG is untouched); each epoch's permutation is moved to the data's device once, so GPU-resident
    data gives GPU batches with one small copy per epoch. A new permutation every epoch; at an epoch
    boundary the next permutation fills the batch (TF's next_batch), so every batch is full.
    Each iter() restarts the same sequence, `start` batches in (a run resumed from a checkpoint at step
    `start` continues the very sequence it was on). Deliberately no __len__: it never ends; stop by steps.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, start: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if len(x) == 0:
            raise ValueError("cannot draw batches from an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b, device = len(self.x), self.batch_size, self.x.device
        gen = torch.Generator().manual_seed(self.seed)

        def new_perm() -> torch.Tensor:
            return torch.randperm(n, generator=gen).to(device)

        perm, pos, step = new_perm(), 0, 0
        while True:
            if pos + b <= n:
                idx = perm[pos : pos + b]
                pos += b
            else:
                parts, need = [perm[pos:]], b - (n - pos)
                while need > 0:  # loops more than once only if batch_size > n
                    perm = new_perm()
                    pos = min(need, n)
                    parts.append(perm[:pos])
                    need -= pos
                idx = torch.cat(parts)
            if step >= self.start:  # the batches before `start` are drawn (same permutations), not gathered
                yield self.x[idx], self.y[idx]
            step += 1


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ordered, contiguous slices (views, no copies); the last batch may be smaller."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
