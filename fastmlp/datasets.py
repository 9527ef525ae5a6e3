"""Datasets of the practical: two concentric circles (generated) and MNIST (IDX files).

``load_mnist()`` with no path looks in the cache directory (``$FASTMLP_DATA_DIR`` or
pooch's cache directory, under ``mnist/``) and downloads the files that are missing
through pooch, verifying the SHA-256 of their uncompressed bytes before anything is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from ._typing import PathLike
from ._validation import check_fraction, check_nonnegative_int, check_positive_float, check_positive_int

__all__ = [
    "circles",
    "load_digits",
    "load_mnist",
    "download_mnist",
    "read_idx",
    "default_data_dir",
    "MNIST_FILES",
    "MNIST_SHA256",
    "MNIST_MIRRORS",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
]

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


def circles(n: int = 1000, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles in 2-D: the practical's first dataset.

    Half of the ``n`` points (class 0) lie on the circle of radius 1, half (class 1)
    on the circle of radius 0.5, at uniformly random angles, each radius perturbed
    by Gaussian noise of standard deviation ``noise``.

    Returns
    -------
    X : ndarray of float64, shape (n, 2)
    y : ndarray of int64, shape (n,)
        In random order.

    Examples
    --------
    >>> X, y = fastmlp.datasets.circles(1000, noise=0.0, seed=0)
    >>> X.shape, np.bincount(y)
    ((1000, 2), array([500, 500]))
    >>> np.allclose(np.hypot(*X[y == 1].T), 0.5)
    True
    """
    n = check_positive_int(n, "n")
    if not (isinstance(noise, (int, float, np.floating)) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative finite number, got {noise!r}")
    seed = check_nonnegative_int(seed, "seed")
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[n // 2 :] = 1
    rng.shuffle(y)
    radius = np.where(y == 0, 1.0, 0.5) + rng.normal(0.0, noise, size=n)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return X, y


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, shaped like :func:`load_mnist`'s output.

    1,797 images of 64 pixels, scaled to [0, 1] as float32, split at random
    (stratified, seeded) into training and test sets: a small offline stand-in for
    MNIST (needs ``pip install "fastmlp[sklearn]"``).

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarray
        Images float32 (n, 64); labels int64 (n,).

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = fastmlp.datasets.load_digits()
    >>> X_train.shape, X_test.shape, X_train.dtype
    ((1347, 64), (450, 64), dtype('float32'))
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    test_fraction = check_fraction(test_fraction, "test_fraction")
    if test_fraction == 0:
        raise ValueError("test_fraction must be a number in (0, 1), got 0.0")
    seed = check_nonnegative_int(seed, "seed")
    digits = sklearn_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    return X_train, y_train, X_test, y_test


def read_idx(path: PathLike, expected_magic: int | None = None) -> np.ndarray:
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
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
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


def default_data_dir() -> str:
    """Where downloaded datasets are cached.

    ``$FASTMLP_DATA_DIR`` if set, else pooch's cache directory for the operating
    system (``~/.cache/fastmlp`` on Linux, ``~/Library/Caches/fastmlp`` on macOS).
    """
    if os.environ.get("FASTMLP_DATA_DIR"):
        return os.environ["FASTMLP_DATA_DIR"]
    pooch = _import_pooch()
    return os.fspath(pooch.os_cache("fastmlp"))


def _import_pooch():
    try:
        import pooch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "downloading MNIST needs pooch: pip install 'fastmlp[datasets]' "
            "(or pass load_mnist a directory holding the four IDX files)"
        ) from exc
    return pooch


class _VerifiedDownload:
    """A pooch downloader that keeps a gzip file only if its *uncompressed* bytes hash right.

    The registry holds the SHA-256 of the uncompressed IDX files, so any faithful
    gzip of them (mirrors recompress) is accepted and nothing else is. pooch writes
    to a temporary file and deletes it when the downloader raises; the file is
    flushed to disk before pooch renames it into the cache.
    """

    def __init__(self, sha256, timeout, progressbar):
        self.sha256 = sha256
        self.timeout = timeout
        self.progressbar = progressbar

    def __call__(self, url, output_file, pooch_obj):
        pooch = _import_pooch()
        pooch.HTTPDownloader(timeout=self.timeout, progressbar=self.progressbar)(url, output_file, pooch_obj)
        with open(output_file, "rb") as fh:
            data = fh.read()
            os.fsync(fh.fileno())
        try:
            digest = hashlib.sha256(gzip.decompress(data)).hexdigest()
        except (OSError, EOFError) as exc:
            raise ValueError(f"{url}: not a complete gzip file ({exc})") from exc
        if digest != self.sha256:
            raise ValueError(f"{url}: SHA-256 of the uncompressed data is {digest}, expected {self.sha256}")


def download_mnist(
    directory: PathLike | None = None,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 30.0,
    progressbar: bool = False,
) -> str:
    """Fetch the MNIST files missing from ``directory`` through pooch; return the directory.

    Parameters
    ----------
    directory : path-like, optional
        Where the four ``.gz`` files are kept; default ``default_data_dir()/mnist``.
    mirrors : sequence of str
        Base URLs tried in order for each file; a mirror that fails, times out or
        serves other bytes is skipped for the next.
    timeout : float
        Seconds to wait for a server before giving up on it.
    progressbar : bool
        Show a download progress bar (needs tqdm).

    A file is kept only once the SHA-256 of its uncompressed bytes matches
    ``MNIST_SHA256``; a failed or corrupt download leaves no file behind.

    Raises
    ------
    OSError
        When no mirror serves a good copy of a file; the message lists each attempt.
    """
    pooch = _import_pooch()
    import requests

    if isinstance(mirrors, str) or not mirrors:
        raise ValueError(f"mirrors must be a non-empty sequence of base URLs, got {mirrors!r}")
    timeout = check_positive_float(timeout, "timeout")
    directory = os.fspath(directory) if directory is not None else os.path.join(default_data_dir(), "mnist")
    os.makedirs(directory, exist_ok=True)
    for stem, sha in MNIST_SHA256.items():
        if _find(directory, stem):
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + stem + ".gz"
            try:
                pooch.retrieve(
                    url,
                    known_hash=None,
                    fname=stem + ".gz",
                    path=directory,
                    downloader=_VerifiedDownload(sha, timeout, progressbar),
                )
            except (OSError, ValueError, requests.exceptions.RequestException) as exc:
                errors.append(f"{url}: {exc}")
                continue
            break
        else:
            raise OSError(f"could not download {stem}: " + "; ".join(errors))
    return directory


def load_mnist(
    path: PathLike | None = None, download: bool = True, mirrors: Sequence[str] = MNIST_MIRRORS, timeout: float = 30.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as ``(X_train, y_train, X_test, y_test)``.

    Parameters
    ----------
    path : path-like, optional
        A directory holding the four standard IDX files (gzip or not). Without it,
        the files are looked for in ``default_data_dir()/mnist`` and, with
        ``download=True``, fetched there through pooch when missing (see
        :func:`download_mnist`; needs ``pip install 'fastmlp[datasets]'``).
    download : bool
        Whether missing files may be downloaded (only when ``path`` is None).
    mirrors, timeout
        Passed to :func:`download_mnist`.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarray
        Images float32 (n, 784) scaled to [0, 1]; labels int64 (n,).
    """
    if path is None:
        path = os.path.join(default_data_dir(), "mnist")
        if download:
            download_mnist(path, mirrors, timeout)
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
