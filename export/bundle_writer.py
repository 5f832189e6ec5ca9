"""Writes a bundle directory all at once or not at all.

Everything goes into a hidden sibling `.NAME.partial-XXXX` (same filesystem, so a rename is
atomic); each file is fsynced as it is written. Only when the body of `staged_directory`
returns does the directory move into place:

  * no output yet: rename(staging, output);
  * --force over an existing bundle: the two directories are exchanged atomically
    (renameat2 RENAME_EXCHANGE on Linux; elsewhere two renames, the old bundle first moved
    aside), then the old one is deleted. Readers see the old bundle or the new one.

Any exception, KeyboardInterrupt included, deletes the staging directory, so an interrupted
build leaves no bundle (a SIGKILL can leave the hidden .partial directory, never a bundle).
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vqrt.runtime.bundle import MANIFEST_FILE


class OutputError(ValueError):
    """The output path cannot take a bundle; the message is one line."""


def check_output(output: Path, force: bool) -> None:
    """Fails early, before any work, when `output` cannot be (re)placed."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise OutputError(f"{output}: exists and is not a directory; choose another -o path")
    if not output.exists():
        return
    is_bundle = (output / MANIFEST_FILE).is_file()
    if not force:
        what = "a bundle" if is_bundle else "a directory"
        raise OutputError(f"{output}: already exists ({what}); pass --force to replace it or "
                          "choose another -o path")
    if not is_bundle and any(output.iterdir()):
        raise OutputError(f"{output}: exists and is not a bundle (no {MANIFEST_FILE}); "
                          "--force only replaces bundles, so choose another -o path")


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two directories; False where the system cannot (then nothing moved)."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(b))


def _move_into_place(staging: Path, output: Path) -> None:
    if not output.exists():
        os.rename(staging, output)
        return
    if _exchange(staging, output):
        shutil.rmtree(staging)  # now holds the old bundle
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    os.rename(output, aside / output.name)
    try:
        os.rename(staging, output)
    except OSError:
        os.rename(aside / output.name, output)  # put the old bundle back
        raise
    shutil.rmtree(aside)


@contextmanager
def staged_directory(output: Path, force: bool) -> Iterator[Path]:
    """Yields an empty staging directory; moves it to `output` when the body returns."""
    output = Path(output)
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is not
        yield staging
        for directory, _, _ in os.walk(staging):
            fsync_directory(Path(directory))
        check_output(output, force)  # nothing appeared at `output` meanwhile
        _move_into_place(staging, output)
        fsync_directory(output.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
