"""Small shared helpers: atomic writes, logging."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask (read by setting and restoring it; no other way in the os module)."""
    m = os.umask(0o022)
    os.umask(m)
    return m


def fix_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file made by ``mkstemp`` (0600) / a folder made by ``mkdtemp`` (0700) the mode a
    plain ``open`` / ``mkdir`` would have: 0666 / 0777 minus the user's umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fix_mode_tree(root: str | Path) -> None:
    """``fix_mode`` on a folder and everything below it."""
    root = Path(root)
    fix_mode(root, directory=True)
    for p in root.rglob("*"):
        if not p.is_symlink():
            fix_mode(p, directory=p.is_dir())


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception (or a kill) the temporary file is removed / left under a ``.tmp`` name
    and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            fix_mode(tmp)          # mkstemp makes 0600 files: respect the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary folder next to ``path``; on success it takes ``path``'s place.

    A failure inside the block removes the temporary folder and leaves ``path`` (and every file
    in it) as it was. An existing ``path`` is moved aside, replaced and then deleted: a kill in
    between two renames can leave a ``.<name>.old-*`` folder, never a mixed old/new folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fix_mode(tmp, directory=True)   # mkdtemp makes 0700 folders; files inside were made by the caller
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "x")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
