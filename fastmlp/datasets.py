"""Datasets of the practical: two concentric circles (generated) and MNIST (IDX files).

``load_mnist()`` with no path looks in the cache directory (``$FASTMLP_DATA`` or
``~/.cache/fastmlp``, under ``mnist/``) and downloads the files that are missing,
verifying the SHA-256 of their uncompressed bytes before anything is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request

import numpy as np

from ._validation import check_nonnegative_int, check_positive_int

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the uncompressed files (their MD5s are the published ones).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Public mirrors of the original gzip files, tried in order.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX magic numbers: unsigned bytes, 3-D images / 1-D labels.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def circles(n=1000, noise=0.1, seed=0):
    """Two concentric circles in 2-D: the practical's first dataset.

    Half of the ``n`` points (class 0) lie on the circle of radius 1, half (class 1)
    on the circle of radius 0.5, at uniformly random angles, each radius perturbed
    by Gaussian noise of standard deviation ``noise``.

    Returns ``(X, y)``: X float64 (n, 2), y int64 (n,), in random order.
    """
    n = check_positive_int(n, "n")
    if not (isinstance(noise, (int, float, np.floating)) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative finite number, got {noise!r}")
    seed = check_nonnegative_int(seed, "seed")
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[n // 2:] = 1
    rng.shuffle(y)
    radius = np.where(y == 0, 1.0, 0.5) + rng.normal(0.0, noise, size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return X, y


def read_idx(path, expected_magic=None):
    """Read one IDX file of unsigned bytes (gzip-compressed or not) into an array.

    The header is a big-endian magic number (``0x0000 08 ndim``, 2049 for labels,
    2051 for images) and ``ndim`` big-endian dimension sizes; the body must hold
    exactly their product of bytes.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return _parse_idx(raw, path, expected_magic)


def _parse_idx(raw, name, expected_magic=None):
    if len(raw) < 4:
        raise ValueError(f"{name}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{name}: wrong IDX magic number {magic}, expected {expected_magic}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{name}: not an IDX file of unsigned bytes (magic number {magic})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{name}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"{name}: IDX body holds {len(raw) - header} bytes, the header {shape} says {expected}"
            + (" (truncated)" if len(raw) - header < expected else "")
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory, stem):
    for candidate in (stem + ".gz", stem):
        p = os.path.join(directory, candidate)
        if os.path.exists(p):
            return p
    return None


def default_data_dir():
    """``$FASTMLP_DATA``, else ``$XDG_CACHE_HOME/fastmlp`` (``~/.cache/fastmlp``)."""
    if os.environ.get("FASTMLP_DATA"):
        return os.environ["FASTMLP_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastmlp")


def download_mnist(directory, mirrors=MNIST_MIRRORS, opener=urllib.request.urlopen):
    """Fetch the MNIST files missing from ``directory``, verifying their SHA-256.

    Each file is written as ``<name>.gz`` through a temporary file and renamed only
    once its uncompressed bytes match ``MNIST_SHA256``; a mirror that fails or
    serves other bytes is skipped for the next one.
    """
    os.makedirs(directory, exist_ok=True)
    for stem, sha in MNIST_SHA256.items():
        if _find(directory, stem):
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + stem + ".gz"
            try:
                with opener(url) as response:
                    data = response.read()
                digest = hashlib.sha256(gzip.decompress(data)).hexdigest()
            except Exception as exc:  # network, HTTP or gzip errors: try the next mirror
                errors.append(f"{url}: {exc}")
                continue
            if digest != sha:
                errors.append(f"{url}: SHA-256 {digest} does not match {sha}")
                continue
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, os.path.join(directory, stem + ".gz"))
            break
        else:
            raise OSError(f"could not download {stem}: " + "; ".join(errors))


def load_mnist(path=None, download=True, mirrors=MNIST_MIRRORS, opener=urllib.request.urlopen):
    """MNIST as ``(X_train, y_train, X_test, y_test)``.

    Images are float32 (n, 784) scaled to [0, 1]; labels int64 (n,). ``path`` is a
    directory holding the four standard IDX files (gzip or not). Without it, the
    files are looked for in ``default_data_dir()/mnist`` and, with ``download=True``,
    fetched there from public mirrors when missing.
    """
    if path is None:
        path = os.path.join(default_data_dir(), "mnist")
        if download:
            download_mnist(path, mirrors, opener)
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MNIST directory {path!r} does not exist")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        found = _find(path, stem)
        if found is None:
            raise FileNotFoundError(f"{stem}(.gz) not found in {path!r}")
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        arrays[key] = read_idx(found, magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    X_train, X_test = (
        (arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / np.float32(255))
        for k in ("train_images", "test_images")
    )
    return X_train, arrays["train_labels"].astype(np.int64), X_test, arrays["test_labels"].astype(np.int64)
