"""circles, the IDX reader and the verified MNIST download, on data the tests make."""

import gzip
import hashlib
import http.server
import threading
import time

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


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves MNIST-like gzip files on 127.0.0.1 under /good/, /corrupt/, /truncated/,
    /dropped/ (announces the full length, then closes half way) and /slow/ (answers
    after 3 s); any other path is a 404. Every request is recorded."""

    files = {}
    requested = []

    def do_GET(self):
        self.requested.append(self.path)
        kind, _, name = self.path.strip("/").partition("/")
        stem = name.removesuffix(".gz")
        if stem not in self.files or kind not in ("good", "corrupt", "truncated", "dropped", "slow"):
            self.send_error(404)
            return
        body = gzip.compress(self.files[stem])
        if kind == "corrupt":
            body = gzip.compress(self.files[stem][:-1] + b"\xff")
        elif kind == "truncated":
            body = body[: len(body) // 2]
        elif kind == "slow":
            time.sleep(3)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if kind == "dropped" else body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
        self.close_connection = kind == "dropped" or self.close_connection

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """(base URL, record of requested paths, raw bytes) of a local mirror of made-up MNIST files."""
    pytest.importorskip("pooch")
    source = tmp_path / "source"
    source.mkdir()
    _, raw = write_mnist(source)
    monkeypatch.setattr(datasets, "MNIST_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in raw.items()})
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    handler = type("LocalMirror", (Mirror,), {"files": raw, "requested": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requested, raw
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_sha256_and_falls_back_to_the_next_mirror(tmp_path, monkeypatch, mirror):
    base, requested, raw = mirror
    monkeypatch.setenv("FASTMLP_DATA_DIR", str(tmp_path / "cache"))
    X_train, y_train, X_test, y_test = datasets.load_mnist(mirrors=(base + "/corrupt/", base + "/good/"))
    assert X_train.shape == (12, 784) and len(y_test) == 5
    assert sum(p.startswith("/corrupt/") for p in requested) == 4
    assert sum(p.startswith("/good/") for p in requested) == 4
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == sorted(k + ".gz" for k in raw)  # no temporary files, nothing corrupt kept
    for stem, data in raw.items():
        assert gzip.decompress((tmp_path / "cache" / "mnist" / (stem + ".gz")).read_bytes()) == data
    # a second load uses the cache and fetches nothing
    datasets.load_mnist(mirrors=(base + "/good/",))
    assert len(requested) == 8


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "dropped", "missing"])
def test_a_bad_mirror_leaves_nothing_behind_and_says_why(tmp_path, mirror, kind):
    base, requested, raw = mirror
    target = tmp_path / "mnist"
    with pytest.raises(OSError, match="could not download train-images-idx3-ubyte") as info:
        datasets.download_mnist(target, mirrors=(f"{base}/{kind}/",))
    assert f"{base}/{kind}/train-images-idx3-ubyte.gz" in str(info.value)
    reason = {
        "corrupt": "SHA-256 of the uncompressed data",
        "truncated": "not a complete gzip file",
        "dropped": "",
        "missing": "404",
    }[kind]
    assert reason in str(info.value)
    assert list(target.iterdir()) == []


def test_a_server_that_does_not_answer_times_out_and_the_next_mirror_serves(tmp_path, mirror):
    base, requested, raw = mirror
    start = time.perf_counter()
    target = datasets.download_mnist(tmp_path / "mnist", mirrors=(base + "/slow/", base + "/good/"), timeout=0.5)
    assert time.perf_counter() - start < 4 * 2.5  # four files, each gives up on /slow/ after 0.5 s
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(k + ".gz" for k in raw)
    assert target == str(tmp_path / "mnist")


def test_download_arguments_are_checked_before_any_request(tmp_path, mirror):
    base, requested, _ = mirror
    with pytest.raises(ValueError, match="mirrors must be a non-empty sequence"):
        datasets.download_mnist(tmp_path, mirrors=base + "/good/")
    with pytest.raises(ValueError, match="timeout"):
        datasets.download_mnist(tmp_path, mirrors=(base + "/good/",), timeout=0)
    assert requested == []


def test_default_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA_DIR", str(tmp_path))
    assert datasets.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("FASTMLP_DATA_DIR")
    pooch = pytest.importorskip("pooch")
    assert datasets.default_data_dir() == str(pooch.os_cache("fastmlp"))
