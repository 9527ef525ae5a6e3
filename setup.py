"""Build of fastmlp's compiled kernels (metadata lives in pyproject.toml).

Portable flags only: wheels must run on any x86-64, so no -march=native. The
hand-written C in _fused.c reaches AVX-512 through gcc's target_clones, picked
at load time; the GEMMs reach it through scipy's runtime-dispatched OpenBLAS.
"""

import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    compile_args = ["/O2"]
else:
    # -fno-math-errno / -fno-trapping-math let gcc vectorise the clamp-and-divide
    # tanh and the update loops without changing any IEEE result (unlike
    # -ffast-math, NaN and inf still propagate); -fopenmp-simd honours
    # `#pragma omp simd` reductions without linking an OpenMP runtime.
    # -g0: no debug information in the wheel (a third of its size otherwise).
    compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-g0"]

extensions = [
    Extension(
        "fastmlp._kernels._cy",
        sources=["fastmlp/_kernels/_cy.pyx", "fastmlp/_kernels/_fused.c"],
        include_dirs=["fastmlp/_kernels"],
        depends=["fastmlp/_kernels/_fused.h", "fastmlp/_kernels/_fused_impl.h"],
        extra_compile_args=compile_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
    ),
)
