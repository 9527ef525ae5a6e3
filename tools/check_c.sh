#!/usr/bin/env bash
# The hand-written C kernels everywhere they must build: gcc and clang on x86-64,
# gcc for aarch64; each build without a warning under -Wall -Wextra, and the C test
# program (tests/c/test_fused.c) run natively and, for aarch64, under qemu. Then
# the Python package built with CC=clang, and its kernel tests run against it.
#
#   tools/check_c.sh
#
# Installs what it needs with apt where it is missing (clang, the aarch64 cross
# compiler, qemu-user, libomp for clang's OpenMP). The C tests run the kernels on
# one thread and on two (OpenMP), and check both give the same bits.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=${PYTHON:-python3}
cd "$root"

need=()
command -v clang >/dev/null || need+=(clang)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
printf '#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n' > "$work/omp.c"
{ command -v clang >/dev/null && clang -fopenmp "$work/omp.c" -o "$work/omp" 2>/dev/null; } || need+=(libomp-dev)
if [ "${#need[@]}" -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The flags of setup.py, plus warnings as errors.
flags=(-O3 -fno-math-errno -fno-trapping-math -fopenmp -Wall -Wextra -Werror -Ifastmlp/_kernels)
sources=(tests/c/test_fused.c fastmlp/_kernels/_fused.c)

for cc in gcc clang; do
    echo "== $cc $($cc -dumpversion), x86-64: build without warnings, run the C tests"
    $cc "${flags[@]}" "${sources[@]}" -lm -o "$work/test-$cc"
    "$work/test-$cc"
done

echo "== aarch64-linux-gnu-gcc $(aarch64-linux-gnu-gcc -dumpversion): build without warnings, run under qemu"
aarch64-linux-gnu-gcc "${flags[@]}" "${sources[@]}" -lm -o "$work/test-aarch64"
file "$work/test-aarch64" | grep -q aarch64
QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 "$work/test-aarch64"

echo "== the Python package built with CC=clang, its kernel tests"
# built from a copy of the tracked files: pip builds in the tree it is given, and
# in the developer's tree its clang build would replace the in-place extension
mkdir "$work/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$PY" -m venv "$work/venv"
CC=clang "$work/venv/bin/pip" install -q "$work/src[test]"
so=$(cd "$work" && "$work/venv/bin/python" -c "import fastmlp._kernels._cy as m; print(m.__file__)")
readelf -p .comment "$so" | grep -q clang || { echo "$so was not compiled by clang" >&2; exit 1; }
# (the C compiler builds the C kernels only: Numba's tests are not repeated)
(cd "$work" && "$work/venv/bin/python" -m pytest "$root/tests/test_kernels.py" --import-mode=importlib \
    -p no:cacheprovider -q -k "not numba")
echo "== done: the C kernels build and pass with gcc and clang, on x86-64 and aarch64"
