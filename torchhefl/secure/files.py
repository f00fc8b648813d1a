"""Writing files that hold secrets (key files, TLS keys, checkpoints) so that they are never exposed.

:func:`write_private_file` (mode 0600) and :func:`write_public_file` (0644 unless told) write
``data`` through a temporary file in the target's own folder:

1. the temporary file gets a random name and is created with
   ``O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600, so it is a new file of ours (a file
   or symlink already at that name is never opened, let alone followed) and is private from its
   first byte whatever the umask (``fchmod`` then sets the final mode exactly);
2. the data is written and ``fsync``-ed;
3. ``os.replace`` puts it at the target path. A symlink at the target is replaced by the file,
   never written through; the file it pointed to is left untouched;
4. the folder is ``fsync``-ed, so the rename itself survives a power cut.

Any error removes the temporary file and leaves the target as it was. A crash leaves the old file
or the new one at the target, never an empty or partial one (a crash between steps 1 and 3 may
leave a mode-0600 temporary ``.<name>.<random>.tmp`` beside it).

:func:`private_directory` makes the folder for such files: a new folder is created with mode 0700
(exactly: neither the umask nor a missing bit narrows or widens it). An existing folder is refused
(:class:`PermissionError` naming the fix) if someone other than this user owns it or if group or
others may write to it, since they could then swap the files in it; one that group or others may
only read is used as it is, with a warning (its file names are visible, the 0600 files' contents
are not). Existing folders are never chmod-ed: the folder is the user's.
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PUBLIC_FILE_MODE",
    "private_directory",
    "write_private_file",
    "write_public_file",
]

PRIVATE_FILE_MODE = 0o600
"""Mode of a file holding a secret: read and write for its owner only."""
PUBLIC_FILE_MODE = 0o644
"""Default mode of a public file (a public key, a certificate)."""
PRIVATE_DIR_MODE = 0o700
"""Mode of a folder created for secret files."""

_NAME_ATTEMPTS = 16
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_private_file(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 (see the module docstring)."""
    _write_atomic(Path(path), bytes(data), PRIVATE_FILE_MODE)


def write_public_file(path: str | os.PathLike, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Atomically replace ``path`` with ``data`` with ``mode`` (default 0644); the file is private
    until its mode is set, and only then put in place."""
    if mode & ~0o777:
        raise ValueError(f"mode {mode:#o} has bits beyond the permission bits")
    _write_atomic(Path(path), bytes(data), mode)


def private_directory(path: str | os.PathLike) -> Path:
    """``path`` as a folder for secret files: created with mode 0700 (its parents as usual) if missing.

    Raises:
        NotADirectoryError: ``path`` exists and is not a folder.
        PermissionError: the existing folder is another user's, or group or others may write to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        _check_existing_directory(path)
        return path
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC)
    try:
        os.fchmod(fd, PRIVATE_DIR_MODE)  # the umask may have taken bits away
    finally:
        os.close(fd)
    return path


def _check_existing_directory(path: Path) -> None:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if os.name != "posix":
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to another user (uid {st.st_uid}): keep secret files in a folder of your own")
    if mode & 0o022:
        raise PermissionError(
            f"{path} is writable by group or others (mode {mode:04o}), who could replace the files in it; chmod 700 {path}"
        )
    if mode & 0o077:
        warnings.warn(
            f"{path} is readable by group or others (mode {mode:04o}): they see its file names, not the private "
            f"files' contents; chmod 700 {path} to hide them",
            UserWarning,
            stacklevel=3,
        )


def _temporary_name(path: Path) -> Path:
    """A fresh random name beside ``path`` for its temporary file."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    for _ in range(_NAME_ATTEMPTS):
        tmp = _temporary_name(path)
        try:
            fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
        except FileExistsError:
            continue  # a file, or a planted symlink, already has that name: never open it
        break
    else:
        raise FileExistsError(f"could not create a temporary file beside {path} ({_NAME_ATTEMPTS} names were taken)")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
