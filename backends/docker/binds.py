"""Bind sources of a Docker job, resolved without following symlinks (launch-semantics.md §3.3).

Docker bind-mounts by path, and the daemon follows every symlink on that path when it mounts. So a
path that was fine when checked can point somewhere else by the time the container starts. The
rules here:

- Only the staff-configured roots (the site workspace, the allowed data roots, the shared-file root)
  are trusted; they are resolved once with realpath. Everything below a root is walked one
  component at a time with openat(O_NOFOLLOW) (`O_PATH`, so no read permission is needed): every
  intermediate component must be a real directory, the last one a real directory (or, for datasets,
  a regular file). A symlink anywhere below the root is refused, never followed.
- Containment is decided lexically first (normalised path under a root), before the filesystem is
  touched, so a path outside the allowed area gets the same answer whether it exists or not.
- `pin()` records (st_dev, st_ino) of each source; `verify()` walks again and compares. The backend
  pins before `containers.create`, verifies after it and immediately before `start`, and once more
  after `start`.

What remains (not closable through the Docker 20.10 API without mount privileges; a bind from a
/proc/<pid>/fd magic link is refused by the kernel across mount namespaces): between the last
`verify()` before `start` and runc's mount inside `start` (~0.1 s here), whoever can write a
*parent* directory of a source can still swap it and swap it back before the post-start verify().
A job cannot reach the workspace (never mounted whole, and no dataset or shared-file dir may
overlap it), so the job dir, startup/ and local/ are exposed only to host users who can write the
workspace (the NVFlare site process). A rw dataset may not contain another source of the same
study; a source nested in *another* study's rw dataset is not detected here (keep dataset parents
unwritable by the job user).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backends.base import BackendError, InvalidJobSpec

OPEN_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Root:
    """A trusted root: `configured` as staff wrote it, `real` its realpath (what Docker receives)."""

    configured: str
    real: str

    @classmethod
    def of(cls, path: str) -> Root:
        return cls(configured=path, real=os.path.realpath(path))

    def relative(self, path: str) -> str | None:
        """`path` (normalised, absolute) relative to this root under either spelling, or None."""
        for base in (self.real, self.configured):
            if path == base:
                return "."
            if path.startswith(base.rstrip("/") + "/"):
                return path[len(base.rstrip("/")) + 1:]
        return None


@dataclass(frozen=True)
class Pin:
    """A bind source as checked: its path, the root it was walked from, and the inode it named."""

    path: str
    root: str
    field: str
    dev: int
    ino: int
    allow_file: bool = False


def lexical(source: object, field: str) -> str:
    """An absolute path, normalised without touching the filesystem ('..' is resolved as text:
    the walk below refuses symlinks, so the text is what Docker will mount)."""
    if not isinstance(source, str) or not source.startswith("/") or "\0" in source:
        raise InvalidJobSpec(field, "must be an absolute host path")
    normal = os.path.normpath(source)
    return "/" + normal.lstrip("/")


def under(path: str, base: str) -> bool:
    """True when `path` is `base` or lies inside it (both normalised, absolute)."""
    return path == base or path.startswith(base.rstrip("/") + "/")


def overlaps(a: str, b: str) -> bool:
    """True when one of the two paths is, contains or lies inside the other."""
    return under(a, b) or under(b, a)


def rebase(path: str, roots: Iterable[Root]) -> tuple[Root, str] | None:
    """The deepest root `path` lies under and `path` rewritten onto that root's real path."""
    best: tuple[Root, str] | None = None
    for root in roots:
        rel = root.relative(path)
        if rel is None:
            continue
        real = root.real if rel == "." else f"{root.real.rstrip('/')}/{rel}"
        if best is None or len(root.real) > len(best[0].real):
            best = (root, real)
    return best


def walk(root: str, path: str, field: str, *, allow_file: bool = False, missing_ok: bool = False) -> os.stat_result:
    """Open `path` (a real path under the realpath'd `root`) component by component, never
    following a symlink, and return the fstat of the last component. Raises InvalidJobSpec naming
    the offending component (its subclass _Missing for a missing last component when `missing_ok`)."""
    rel = os.path.relpath(path, root)
    if rel == ".." or rel.startswith("../"):
        raise InvalidJobSpec(field, f"{path} is outside {root}")
    parts = [] if rel == "." else rel.split("/")
    try:
        fd = os.open(root, OPEN_FLAGS | os.O_DIRECTORY)
    except OSError as exc:
        raise InvalidJobSpec(field, f"the configured root {root} cannot be opened ({os.strerror(exc.errno or 0)})") from None
    try:
        done = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            here = f"{done.rstrip('/')}/{part}"
            flags = OPEN_FLAGS if (last and allow_file) else OPEN_FLAGS | os.O_DIRECTORY
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _walk_error(exc, fd, part, here, field, last=last, missing_ok=missing_ok) from None
            os.close(fd)
            fd, done = child, here
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISLNK(info.st_mode):  # O_PATH|O_NOFOLLOW opens the link itself
        raise InvalidJobSpec(field, f"{path} must not be a symlink")
    if not (stat.S_ISDIR(info.st_mode) or (allow_file and stat.S_ISREG(info.st_mode))):
        raise InvalidJobSpec(field, f"{path} is not a directory" + (" or regular file" if allow_file else ""))
    return info


class _Missing(InvalidJobSpec):
    pass


def _walk_error(exc: OSError, fd: int, part: str, here: str, field: str, *, last: bool, missing_ok: bool) -> Exception:
    if exc.errno == errno.ENOENT:
        if last and missing_ok:
            return _Missing(field, f"{here} does not exist")
        return InvalidJobSpec(field, f"{here} does not exist")
    try:
        info = os.stat(part, dir_fd=fd, follow_symlinks=False)
    except OSError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        return InvalidJobSpec(field, f"{here} must not be a symlink (bind sources and their parents must be real directories)")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return InvalidJobSpec(field, f"{here} is not a directory")
    if exc.errno == errno.EACCES:
        return InvalidJobSpec(field, f"{here} cannot be searched by the launcher")
    return InvalidJobSpec(field, f"{here} cannot be opened ({os.strerror(exc.errno or 0)})")


def exists_beneath(root: str, path: str, field: str) -> bool:
    """walk() for a path that may be missing: False when only its last component is absent."""
    try:
        walk(root, path, field, missing_ok=True)
    except _Missing:
        return False
    return True


def pin(root: str, path: str, field: str, *, allow_file: bool = False) -> Pin:
    info = walk(root, path, field, allow_file=allow_file)
    return Pin(path=path, root=root, field=field, dev=info.st_dev, ino=info.st_ino, allow_file=allow_file)


def verify(pins: Sequence[Pin], when: str) -> None:
    """Walk every pinned source again; a symlink, a missing path or another inode is a permanent
    launch error naming the path."""
    for p in pins:
        try:
            info = walk(p.root, p.path, p.field, allow_file=p.allow_file)
        except InvalidJobSpec as exc:
            raise BackendError(f"bind source {p.path} changed {when}: {exc.reason}") from None
        if (info.st_dev, info.st_ino) != (p.dev, p.ino):
            raise BackendError(f"bind source {p.path} changed {when}: it is no longer the directory that was checked")
