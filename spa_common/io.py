"""File-system steps every package shares so that no stop loses or hides data (docs/design.md, "Data safety").

- ``atomic_open`` / ``atomic_write``: a file appears whole or not at all (temporary name,
  fsync, rename; the temporary is removed on any error or signal). Every file spa writes
  outside a staged directory goes through them.
- ``staged_dir``: the same for a directory of outputs; an existing directory is replaced only
  when ``owned`` proves it an earlier output of the same tool.
- ``check_apart``: an output never equals, contains or lies inside the data it is made from.
- ``directory_lock``: one writer per output directory (``fcntl.flock``).
- A full disk (ENOSPC, EDQUOT) becomes a ``SpaError`` that says so and names the file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from spa_common.errors import ParamError, SpaError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def disk_full(path: Path, kept: str = "nothing was written") -> SpaError:
    return SpaError(f"{path}: disk full (no space left on device); {kept}")


@contextmanager
def atomic_open(path: Path, mode: str = "wb", *, kept: str = "the previous file, if any, is untouched",
                **open_args) -> Iterator[IO]:
    """Write ``path`` through a temporary sibling that is fsynced and renamed onto it at the end.

    On any error (or KeyboardInterrupt) the temporary is removed and ``path`` is untouched;
    a full disk raises SpaError naming ``path`` and ``kept``.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path, kept) from None
        raise
    finally:
        remove_quietly(tmp)


def atomic_write(path: Path, data: bytes, **kwargs) -> None:
    with atomic_open(path, "wb", **kwargs) as f:
        f.write(data)


def temporary_path(path: Path) -> Path:
    """Where ``atomic_open`` writes ``path`` before the rename: a hidden sibling named for this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named as an ``atomic_open`` temporary (of this process or of a killed one)."""
    return re.fullmatch(r"\..+\.tmp-\d+", Path(path).name) is not None


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_apart(out: Path, data: Path, what: str) -> None:
    """SpaError when ``out`` is ``data``, lies inside it, or contains it (compared after resolving links)."""
    a, b = Path(out).resolve(), Path(data).resolve()
    if a == b or b in a.parents or a in b.parents:
        relation = "is" if a == b else "lies inside" if b in a.parents else "contains"
        raise SpaError(f"{out}: output {relation} the {what} {data}; write outputs elsewhere")


def foreign_entries(directory: Path, ours: Callable[[Path], bool]) -> list[str]:
    """Names in ``directory`` that ``ours`` does not recognise, sorted."""
    return sorted(p.name for p in Path(directory).iterdir() if not ours(p))


# ------------------------------------------------------------------------------ staged directories


def refuse_foreign(out: Path, owned: Callable[[Path], Optional[str]], refusing: str) -> bool:
    """Whether ``out`` is a non-empty directory; SpaError ``{out}: not empty and {why}; refusing to
    {refusing}`` when it is one that ``owned`` does not recognise (``owned(out)`` says why not)."""
    out = Path(out)
    if not (out.is_dir() and any(out.iterdir())):
        return False
    reason = owned(out)
    if reason is not None:
        raise SpaError(f"{out}: not empty and {reason}; refusing to {refusing}")
    return True


@contextmanager
def staged_dir(out: Path, *, overwrite: bool, owned: Callable[[Path], Optional[str]]) -> Iterator[Path]:
    """Yield a fresh sibling ``out.tmp-<pid>``; it replaces ``out`` on success and is deleted on error.

    A non-empty ``out`` is replaced only when ``owned(out)`` returns None (it is provably an
    earlier output of this tool; otherwise it returns why not) and ``overwrite`` is set.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpaError(f"{out}: output path exists and is not a directory")
    if refuse_foreign(out, owned, "replace it (choose a new or empty directory)"):
        if not overwrite:
            raise ParamError(f"{out}: output directory is not empty (pass {{overwrite}} to replace it)", "overwrite")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    _remove_stale(out)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise SpaError(f"{out}: cannot create output directory ({e.strerror or e})") from None
    try:
        yield tmp
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full(_final_name(e.filename, tmp, out)) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _final_name(filename, tmp: Path, out: Path) -> Path:
    """Where a file being written under ``tmp`` would have ended up."""
    try:
        return out / Path(filename).relative_to(tmp)
    except (TypeError, ValueError):
        return out


def _remove_stale(out: Path) -> None:
    """Clean up after a killed run (its process is gone): delete ``out.tmp-<pid>``, and
    ``out.old-<pid>`` too, unless it is the previous output a kill caught mid-swap (then ``out``
    is missing and it is put back)."""
    if not out.parent.is_dir():
        return
    for path in sorted(out.parent.glob(f"{out.name}.[to][ml][pd]-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if path.name.startswith(f"{out.name}.old-") and not out.exists():
            os.replace(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(tmp: Path, out: Path) -> None:
    if not out.is_dir():
        os.replace(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    with signals_deferred():   # a Ctrl-C between the renames would leave neither at ``out``
        os.replace(out, old)
        os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered when the block ends)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ------------------------------------------------------------------------------ lock


@contextmanager
def directory_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created, and removed on release).

    Another holder -> SpaError naming the directory, ``what`` is running there, and its pid.
    After locking, the file is checked to still be the one at ``path`` (a holder that just
    released it has unlinked it), so two processes never both proceed.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpaError(f"{path.parent}: another {what} (pid {holder}) is writing here; "
                           f"wait for it to finish, or write elsewhere") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        remove_quietly(path)
        os.close(fd)


def lock_holder(path: Path) -> Optional[str]:
    """The pid written in lock file ``path`` while some process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None
