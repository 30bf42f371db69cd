"""Build the optional native keyed-engine kernel.

The extension is plain C (no torch headers, no external libraries) built with
the machine's compiler. If it cannot be built, installation still succeeds and
torchinit falls back to its pure-torch reference backend (with one warning).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = os.path.join("src", "torchinit", "engines", "keyed", "_native.c")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        sys.stderr.write(
            f"WARNING: torchinit native kernel not built ({exc}); "
            "the pure-torch reference backend will be used.\n"
        )


ext_modules = []
if os.path.exists(SRC) and os.environ.get("TORCHINIT_NO_NATIVE") != "1":
    ext_modules.append(
        Extension(
            "torchinit.engines.keyed._native",
            sources=[SRC],
            # -ffp-contract=off: no FMA contraction, so the kernel is bit-identical
            # to the reference backend (IEEE basic ops only). -fno-math-errno and
            # -fno-trapping-math only drop errno/FP-exception-flag semantics (never
            # a computed value) so that gcc can if-convert and vectorize the loops.
            extra_compile_args=[
                "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
                "-fno-trapping-math", "-std=c11", "-pthread",
            ],
            extra_link_args=["-pthread"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
