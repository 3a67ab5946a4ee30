"""Small shared helpers: atomic writes (with one-line I/O errors), YAML and JSON reading."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

IO_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.EFBIG: "file too large", errno.EIO: "input/output error"}
LOW_SPACE = 1 << 20        # a write that failed with less than 1 MiB free: the disk is full


class WriteError(OSError):
    """A write that failed for an I/O reason; ``str()`` is one line naming the path and the cause."""

    def __init__(self, code: int | None, path: str | Path, cause: str):
        super().__init__(code, cause, str(path))
        self.path, self.cause = str(path), cause

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.cause}"


def io_cause(exc: BaseException, folder: str | Path) -> tuple[int | None, str] | None:
    """(errno, cause) when ``exc`` (raised while writing into ``folder``) is an I/O failure: an
    OSError with a known errno, or a library error (torch, h5py) that hides one, diagnosed from the
    folder (full disk, no write permission, read-only mount). None for any other failure."""
    if isinstance(exc, WriteError):
        return exc.errno, exc.cause
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in IO_CAUSES:
        return code, IO_CAUSES[code]
    text = str(exc).lower()
    for c, cause in IO_CAUSES.items():
        if f"errno = {c}," in text or f"[errno {c}]" in text or cause in text:
            return c, cause
    folder = Path(folder)
    try:
        st = os.statvfs(folder)
        if st.f_flag & getattr(os, "ST_RDONLY", 1):
            return errno.EROFS, IO_CAUSES[errno.EROFS]
        if st.f_bavail * st.f_frsize < LOW_SPACE:
            return errno.ENOSPC, IO_CAUSES[errno.ENOSPC]
    except OSError:
        pass
    if not os.access(folder, os.W_OK):
        return errno.EACCES, IO_CAUSES[errno.EACCES]
    return None


def _raise_write_error(exc: BaseException, path: Path, folder: Path) -> None:
    found = io_cause(exc, folder)
    if found is not None:
        raise WriteError(found[0], path, found[1]) from None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _raise_write_error(e, path, path)
        raise


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
    _mkdir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _raise_write_error(e, path, path.parent)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            fix_mode(tmp)          # mkstemp makes 0600 files: respect the umask like open() does
        os.replace(tmp, path)
    except BaseException as e:
        found = io_cause(e, path.parent) if isinstance(e, Exception) else None   # before the cleanup frees space
        if os.path.exists(tmp):
            os.unlink(tmp)
        if found is not None:
            raise WriteError(found[0], path, found[1]) from None
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary folder next to ``path``; on success it takes ``path``'s place.

    A failure inside the block removes the temporary folder and leaves ``path`` (and every file
    in it) as it was. An existing ``path`` is moved aside, replaced and then deleted: a kill in
    between two renames can leave a ``.<name>.old-*`` folder, never a mixed old/new folder.
    """
    path = Path(path)
    _mkdir(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        _raise_write_error(e, path, path.parent)
        raise
    try:
        yield tmp
    except BaseException as e:
        found = io_cause(e, path.parent) if isinstance(e, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if found is not None:
            raise WriteError(found[0], f"{path}{os.sep}", found[1]) from None
        raise
    fix_mode(tmp, directory=True)   # mkdtemp makes 0700 folders; files inside were made by the caller
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "x")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_h5ad(adata, path: str | Path) -> Path:
    """Write ``adata`` as .h5ad atomically. The HDF5 file is built in memory and then written with
    one plain file write, so a full disk gives one clear error (``WriteError``) instead of HDF5
    failing inside h5py's object destructors (dozens of tracebacks, sometimes a crash)."""
    import h5py
    from anndata.io import write_elem
    path = Path(path)
    adata.strings_to_categoricals()              # as AnnData.write_h5ad does
    with h5py.File(f"{path.name}.in-memory", "w", driver="core", backing_store=False) as f:
        f.attrs.setdefault("encoding-type", "anndata")
        f.attrs.setdefault("encoding-version", "0.1.0")
        write_elem(f, "/", adata)
        f.flush()
        image = f.id.get_file_image()
    with atomic_path(path) as tmp:
        _write_bytes(tmp, image)
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


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


# ------------------------------------------------------------------ YAML without silent duplicate keys


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a mapping holding the same key twice (PyYAML keeps the
        last one silently: two ``train:`` blocks would drop the first). Merge keys (``<<:``) may
        still be overridden, as YAML intends."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:       # unhashable key: PyYAML reports it itself
                        continue
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r}: first at line {first.start_mark.line + 1}, again at "
                            f"line {key_node.start_mark.line + 1} (YAML would keep only the last one)",
                            key_node.start_mark)
                    seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_yaml(text: str, source: str | Path = "<string>"):
    """Parse YAML safely, refusing duplicate keys: ``ValueError`` naming ``source`` and both lines."""
    import yaml
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        if e.problem and e.problem.startswith("duplicate key"):
            raise ValueError(f"{source}:{e.problem_mark.line + 1}: {e.problem}") from None
        raise


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file's content; a missing or unreadable file is an error that names it and says what
    it was (``FileNotFoundError`` / ``ValueError``)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what}: {e}") from None


def read_yaml(path: str | Path, what: str = "YAML file"):
    """Read and parse a YAML file (duplicate keys refused); errors name the file."""
    import yaml
    path = Path(path)
    text = read_text(path, what)
    try:
        return load_yaml(text, path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None


def read_json(path: str | Path, what: str = "JSON file"):
    """Read a JSON file written by spagraph; a missing, unreadable or corrupt file is an error that
    names it (``FileNotFoundError`` / ``ValueError``)."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {what} is not valid JSON (corrupt or truncated?): {e}") from None
