"""circles, the IDX reader and the verified MNIST download, on data the tests make."""

import gzip
import hashlib
import io

import numpy as np
import pytest

from fastmlp import datasets


def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_mnist(directory, n_train=12, n_test=5, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    raw = {}
    for stem, a in arrays.items():
        raw[stem] = idx_bytes(a)
        data = gzip.compress(raw[stem]) if compress else raw[stem]
        (directory / (stem + (".gz" if compress else ""))).write_bytes(data)
    return arrays, raw


def test_circles_geometry_and_balance():
    X, y = datasets.circles(1001, noise=0.0, seed=3)
    assert X.shape == (1001, 2) and y.shape == (1001,)
    assert set(np.unique(y)) == {0, 1} and abs(int((y == 0).sum()) - int((y == 1).sum())) <= 1
    r = np.hypot(X[:, 0], X[:, 1])
    np.testing.assert_allclose(r[y == 0], 1.0)
    np.testing.assert_allclose(r[y == 1], 0.5)
    Xn, _ = datasets.circles(4000, noise=0.1, seed=3)
    yn = datasets.circles(4000, noise=0.1, seed=3)[1]
    assert abs(np.hypot(*Xn[yn == 0].T).std() - 0.1) < 0.01
    a, b = datasets.circles(50, seed=7), datasets.circles(50, seed=7)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_a_directory(tmp_path, compress):
    arrays, _ = write_mnist(tmp_path, compress=compress)
    X_train, y_train, X_test, y_test = datasets.load_mnist(tmp_path)
    assert X_train.shape == (12, 784) and X_train.dtype == np.float32
    assert X_test.shape == (5, 784) and y_test.dtype == np.int64
    np.testing.assert_allclose(X_train, arrays["train-images-idx3-ubyte"].reshape(12, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0


def test_read_idx_rejects_wrong_magic_and_truncation(tmp_path):
    images = np.zeros((3, 28, 28))
    p = tmp_path / "f"
    p.write_bytes(idx_bytes(images))
    assert datasets.read_idx(p, 2051).shape == (3, 28, 28)
    with pytest.raises(ValueError, match="wrong IDX magic number 2051, expected 2049"):
        datasets.read_idx(p, 2049)
    p.write_bytes(idx_bytes(images)[:-10])
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(p, 2051)
    p.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        datasets.read_idx(p, 2051)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        datasets.read_idx(p)
    p.write_bytes(idx_bytes(images) + b"extra")
    with pytest.raises(ValueError, match="header"):
        datasets.read_idx(p)


def test_load_mnist_names_missing_files_and_mismatched_counts(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4))))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        datasets.load_mnist(tmp_path)


class FakeMirror:
    """Serves gzip files from memory, as urllib's urlopen would; records requests."""

    def __init__(self, files):
        self.files, self.requested = files, []

    def __call__(self, url):
        self.requested.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.files:
            raise OSError(f"404 {url}")
        return io.BytesIO(self.files[name])


def test_download_verifies_sha256_and_falls_back_to_the_next_mirror(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    _, raw = write_mnist(source)
    monkeypatch.setattr(datasets, "MNIST_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in raw.items()})
    good = FakeMirror({k + ".gz": gzip.compress(v) for k, v in raw.items()})
    tampered = FakeMirror({k + ".gz": gzip.compress(v + b"x") for k, v in raw.items()})

    def opener(url):
        return (tampered if url.startswith("https://bad/") else good)(url)

    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "cache"))
    X_train, y_train, X_test, y_test = datasets.load_mnist(mirrors=("https://bad/", "https://good/"), opener=opener)
    assert X_train.shape == (12, 784) and len(y_test) == 5
    assert len(tampered.requested) == 4 and len(good.requested) == 4
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == sorted(k + ".gz" for k in raw)  # no temporary files, nothing tampered kept
    # a second load uses the cache and fetches nothing
    datasets.load_mnist(mirrors=("https://good/",), opener=opener)
    assert len(good.requested) == 4


def test_download_fails_clearly_when_no_mirror_has_good_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path))
    with pytest.raises(OSError, match="could not download train-images-idx3-ubyte"):
        datasets.load_mnist(mirrors=("https://nowhere/",), opener=FakeMirror({}))
    assert list((tmp_path / "mnist").iterdir()) == []
