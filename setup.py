"""Build of fastmlp's compiled kernels (metadata lives in pyproject.toml).

Portable flags only: wheels must run on any x86-64, so no -march=native. The
hand-written C in _fused.c reaches AVX2 and AVX-512 through builds of its own for
each (gcc 11 or later), picked at run time; the GEMMs reach them through scipy's
runtime-dispatched OpenBLAS.
The kernels run on several threads through OpenMP where the compiler supports it
(gcc; clang with libomp); elsewhere they are built for one thread.
"""

import os
import sys
import tempfile

import numpy
from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if sys.platform == "win32":
    compile_args = ["/O2"]
    OPENMP = ["/openmp"]
else:
    # -fno-math-errno / -fno-trapping-math let gcc vectorise the clamp-and-divide
    # tanh and the update loops without changing any IEEE result (unlike
    # -ffast-math, NaN and inf still propagate).
    # -g0: no debug information in the wheel (a third of its size otherwise).
    # -fopenmp-simd honours `#pragma omp simd` with or without the OpenMP runtime.
    compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-g0"]
    OPENMP = ["-fopenmp"]

OPENMP_TEST = """
#include <omp.h>
int main(void) { return omp_get_max_threads() < 1; }
"""


class BuildWithOpenMP(build_ext):
    """build_ext that adds the OpenMP flags where the compiler builds and links an
    OpenMP program, and otherwise builds the kernels for one thread (saying so)."""

    def build_extensions(self):
        flags = OPENMP if self._compiles_openmp() else []
        if not flags:
            print("fastmlp: the C compiler has no OpenMP; building the kernels for one thread")
        for ext in self.extensions:
            ext.extra_compile_args = ext.extra_compile_args + flags
            ext.extra_link_args = ext.extra_link_args + ([] if sys.platform == "win32" else flags)
        super().build_extensions()

    def _compiles_openmp(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            try:
                objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=OPENMP)
                self.compiler.link_executable(
                    objects, "omp_test", output_dir=tmp, extra_postargs=[] if sys.platform == "win32" else OPENMP
                )
            except Exception:  # CompileError, LinkError: no OpenMP here
                return False
        return True


def render_templates(paths):
    """Write each Tempita template ``X.pyx.tp`` to ``X.pyx`` where that changes it
    (the kernels' Cython declares every C function for float and double once)."""
    for template in paths:
        with open(template, encoding="utf-8") as f:
            text = Tempita.sub(f.read())
        target = template[: -len(".tp")]
        if not os.path.exists(target) or open(target, encoding="utf-8").read() != text:
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)


render_templates(["fastmlp/_kernels/_cy.pyx.tp"])

extensions = [
    Extension(
        "fastmlp._kernels._cy",
        sources=["fastmlp/_kernels/_cy.pyx", "fastmlp/_kernels/_fused.c"],
        include_dirs=["fastmlp/_kernels", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[
            "fastmlp/_kernels/_fused.h",
            "fastmlp/_kernels/_fused_decl.h",
            "fastmlp/_kernels/_fused_level.h",
            "fastmlp/_kernels/_ops.h",
            "fastmlp/_kernels/_fused_impl.h",
            "fastmlp/_kernels/_sparse_impl.h",
            "fastmlp/_kernels/_deep_impl.h",
            "fastmlp/_kernels/_blas_impl.h",
        ],
        extra_compile_args=compile_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
    ),
    cmdclass={"build_ext": BuildWithOpenMP},
)
