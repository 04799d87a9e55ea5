"""The cffi builder for layerstore._core (out-of-line API mode), referenced by setup.py.

It stays outside the installed package.  Paths are computed from this file's location so the
build works from any current directory.  Environment:
  LAYERSTORE_WERROR=1    compile with -Werror (CI does)
  LAYERSTORE_SANITIZE=1  compile and link with AddressSanitizer + UBSan (CI runs the native tests
                         once this way, with libasan preloaded into Python)
  LAYERSTORE_TEST_HOOKS=1  a test build: compile in the crash-test hook (ls_test_step), which
                         SIGKILLs the process at a chosen step; tests/test_crash.py needs it, and
                         the installed product never has it
A changed variable does not make setuptools rebuild what it built before: add --force
(`python setup.py build_ext --inplace --force`), or build from a clean tree as CI does.
"""

import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _version():
    with open(os.path.join(ROOT, "layerstore", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _cdef(header_path):
    # ffi.cdef understands declarations, not the preprocessor: drop the include guard and includes.
    with open(header_path) as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def _sanitize():
    return os.environ.get("LAYERSTORE_SANITIZE") == "1"


def _test_hooks():
    return os.environ.get("LAYERSTORE_TEST_HOOKS") == "1"


def _flags():
    cflags = ["-std=gnu11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]
    ldflags = ["-pthread"]
    if os.environ.get("LAYERSTORE_WERROR") == "1":
        cflags.append("-Werror")
    if _sanitize():
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-omit-frame-pointer", "-g"]
        cflags = [f for f in cflags if f != "-O3"] + ["-O1"] + san
        ldflags += san
    return cflags, ldflags


def make_builder(absolute: bool) -> FFI:
    # setuptools wants sources relative to the project root (setup.py runs from there);
    # ffi.compile() runs the compiler from its tmpdir, so a direct build needs absolute paths.
    sources = sorted(glob.glob(os.path.join(HERE, "*.c")))
    builder = FFI()
    builder.cdef(_cdef(os.path.join(HERE, "layerstore.h")))
    cflags, ldflags = _flags()
    builder.set_source(
        "layerstore._core",
        '#include "layerstore.h"\n',
        sources=sources if absolute else [os.path.relpath(p, ROOT) for p in sources],
        include_dirs=[HERE],
        define_macros=[("LS_VERSION", '"%s"' % _version()), ("_GNU_SOURCE", "1")]
        + ([("LS_SANITIZED", "1")] if _sanitize() else [])
        + ([("LS_TEST_HOOKS", "1")] if _test_hooks() else []),
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


ffibuilder = make_builder(absolute=False)

if __name__ == "__main__":
    make_builder(absolute=True).compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
