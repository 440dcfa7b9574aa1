"""Atomic file writes: a reader sees the old file or the new one, never a part.

Each write goes to a temporary file in the same folder (created with its final
mode, so a key is never readable by others even for a moment), is fsynced,
renamed over the target with ``os.replace``, and the folder is fsynced so the
rename survives a crash. On any error the temporary file is removed and the
target is left as it was.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_MODE = 0o600
CERT_MODE = 0o644


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int = CERT_MODE) -> None:
    """Replace ``path`` with ``data`` atomically, the new file having ``mode``."""
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_atomic(path: Path, data: bytes, mode: int = CERT_MODE) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False): never half-written,
    and of two processes racing, exactly one wins (``link`` does not replace)."""
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_pair_atomic(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write several files of one folder so that no failure leaves a mix.

    All temporary files are written and synced first; only then are they
    renamed into place, back to back. A failure before the renames leaves
    every target untouched. Readers validate a pair (the key must match the
    certificate), so the microseconds between two renames are never served.
    """
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for name, (data, mode) in files.items():
            target = folder / name
            temps.append((_write_temp(target, data, mode), target))
        for tmp, target in temps:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    fsync_dir(folder)
