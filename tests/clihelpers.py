"""The CLI run in this process (faster than a subprocess, for tests of many invocations), and
an OCI layout whose index names no platform."""

import contextlib
import io
import os

import archives as A
from layerstore import cli


def run(*args) -> tuple[int, str, str]:
    """layerstore ARGS on the store of $LAYERSTORE_ROOT: (exit status, stdout, stderr)."""
    out, err = io.TextIOWrapper(io.BytesIO()), io.StringIO()     # cat writes out.buffer
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--root", os.environ["LAYERSTORE_ROOT"], *args])
    out.flush()
    return rc, out.buffer.getvalue().decode(), err.getvalue()


def error(args, status: int = 1) -> str:
    """stderr of a command that must fail with status and one `layerstore: error:` line."""
    rc, out, err = run(*args)
    assert rc == status, (rc, out, err)
    assert err.startswith("layerstore: error: ") and err.count("\n") == 1, err
    return err


def oci_tar(layers, tags, config: bytes) -> io.BytesIO:
    """An OCI layout tar of one image whose index entry gives no platform (only its config
    does)."""
    blobs, desc = A.oci_blobs(layers, tags, config_bytes=config)
    del desc["platform"]
    return io.BytesIO(A.tar_of(A.oci_layout_files([desc], blobs)))
