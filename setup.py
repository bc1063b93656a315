"""Builds the compiled kernels, minigpt.kernels._core (Cython wrapper + csrc/*.c), and the C decoder
over them, minigpt.engine._cdecoder (+ csrc/decoder.c; it reaches the kernels through _core's table).

Metadata lives in pyproject.toml. Compiler flags live in one place, BuildExt below, chosen by compiler
type. No -march=native: what users install must run on any x86-64 / ARM64 CPU, so ISA-specific
code (AVX2, NEON) is to be chosen at run time by CPU detection (csrc/kernels.h slots), never here.

    pip install .                          # users
    python setup.py build_ext --inplace    # developers
"""

import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

# compiler_type -> (compile args, link args). -ffp-contract=off: a * b + c stays two roundings where the
# C says so (FMAs are written as FMAs), so minigpt/kernels/numpy_ref.py can compute the same floats.
FLAGS = {
    "msvc": (["/O2", "/fp:precise"], []),
    "unix": (["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unused-function", "-pthread"], ["-pthread"]),
    "mingw32": (["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unused-function"], []),
}


class BuildExt(build_ext):
    """build_ext that sets every compiler flag, keyed on the compiler in use."""

    def build_extensions(self):
        compile_args, link_args = FLAGS.get(self.compiler.compiler_type, FLAGS["unix"])
        for ext in self.extensions:
            ext.extra_compile_args = list(compile_args)
            ext.extra_link_args = list(link_args)
        super().build_extensions()


class Sdist(sdist):
    """sdist that also ships the C headers (setuptools takes an Extension's sources, not its depends)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, sorted({*files, *glob.glob("csrc/*.h")}))


DECODER_C = "csrc/decoder.c"


def extension(name, sources):
    return Extension(name, sources=sources, include_dirs=["csrc", np.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                     depends=sorted(glob.glob("csrc/*.h")))


kernels = extension("minigpt.kernels._core",
                    ["minigpt/kernels/_core.pyx", *sorted(set(glob.glob("csrc/*.c")) - {DECODER_C})])
decoder = extension("minigpt.engine._cdecoder", ["minigpt/engine/_cdecoder.pyx", DECODER_C])

setup(
    packages=find_namespace_packages(include=["minigpt", "minigpt.*"], exclude=["*.__pycache__"]),
    package_data={"minigpt.kernels": ["_core.pyx"], "minigpt.engine": ["_cdecoder.pyx"],  # so an sdist builds
                  "minigpt.data": ["*.txt"],         # the text `convert --check` reads
                  "minigpt.serve": ["static/*"]},    # the chat page
    exclude_package_data={"minigpt.kernels": ["*.c"], "minigpt.engine": ["*.c"]},  # Cython's generated C
    ext_modules=cythonize([kernels, decoder], language_level=3),
    cmdclass={"build_ext": BuildExt, "sdist": Sdist},
)
