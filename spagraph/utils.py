"""Small shared helpers: atomic writes, logging."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


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


def read_yaml(path: str | Path, what: str = "YAML file"):
    """Read and parse a YAML file (duplicate keys refused); errors name the file."""
    import yaml
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what}: {e}") from None
    try:
        return load_yaml(text, path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None


def read_json(path: str | Path, what: str = "JSON file"):
    """Read a JSON file written by spagraph; a missing, unreadable or corrupt file is an error that
    names it (``FileNotFoundError`` / ``ValueError``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {what} is not valid JSON (corrupt or truncated?): {e}") from None
