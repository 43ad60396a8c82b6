"""Durable file writes: a file is replaced whole or not at all, even by a crash mid-write.

The bytes go to a temporary file beside the target (`.<name>.<random>.tmp`), flushed to disk,
then renamed over it. A writer killed before the rename (SIGKILL, a power cut) leaves only that
hidden temporary; a run folder removes its own under its lease (`leftover_temporaries`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from glmc.errors import GlmcError

# A save's files in the making: `.<name>.<random>.tmp` (write_durably), `.<name>.<pid>.link` (link_or_move).
TEMPORARY_SUFFIX, LINK_SUFFIX = ".tmp", ".link"


def link_or_move(source: Path, target: Path) -> None:
    """Replace `target` by a hard link to `source`, atomically; where the file system has no hard
    links (FAT, some network shares), move `source` there instead."""
    link = target.with_name(f"{temporary_prefix(target)}{os.getpid()}{LINK_SUFFIX}")
    link.unlink(missing_ok=True)
    try:
        os.link(source, link)
    except OSError:
        os.replace(source, target)
        return
    os.replace(link, target)


def write_durably(path: Path, data: bytes) -> Path:
    """Write `data` to a new temporary file beside `path`, on disk when this returns."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def leftover_temporaries(path: Path) -> list[Path]:
    """The temporary files beside `path` that a save of it (or of its checksum, or `.prev`) killed
    before its rename left behind. Remove them only while holding the folder's lease: then no save
    of these files can be under way."""
    return sorted(leftover for suffix in (TEMPORARY_SUFFIX, LINK_SUFFIX)
                  for leftover in path.parent.glob(f"{temporary_prefix(path)}*{suffix}"))


def temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a reader, or a crash, sees the old or the new file, never a
    mix or a truncated one; a full disk or an unwritable folder is one GlmcError, and the old file stays."""
    try:
        os.replace(write_durably(path, data), path)
    except OSError as error:
        raise GlmcError(f"{disk_problem(error)} while writing {path}; the previous version is kept") from None
    sync_folder(path.parent)


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def disk_problem(error: OSError) -> str:
    return "disk full" if error.errno == errno.ENOSPC else f"cannot write ({error.strerror or error})"


def sync_folder(folder: Path) -> None:
    # The renames themselves are durable only once the folder's entry is flushed.
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def file_sha256(path: Path) -> str:
    """The file's SHA-256 as hex, read a megabyte at a time (checkpoints of the wide network are 60 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
