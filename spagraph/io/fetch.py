"""Download the files a dataset card lists, verify their sha256, write them atomically.

``fetch_dataset("her2st", "data/her2st")`` downloads every file of ``datasets/her2st.yaml`` into
the layout the reader expects. ``mirror`` replaces the card's ``base_url``: an ``http(s)://``
or ``file://`` URL, or a plain directory holding the upstream layout.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from spagraph.io.cards import CardFile, DatasetCard, load_card

log = logging.getLogger("spagraph")

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def resolve_url(card: DatasetCard, f: CardFile, mirror: str | Path | None = None) -> str | None:
    """The URL (or local path) one file is fetched from.

    A relative ``url`` is joined to ``mirror`` (if given) else the card's ``base_url``; an absolute
    URL is used as is, except that with a mirror its part below ``base_url`` (or its URL path) is
    looked up in the mirror.
    """
    if f.url is None:
        return None
    absolute = urllib.parse.urlparse(f.url).scheme != ""
    if mirror is None:
        if absolute:
            return f.url
        if not card.base_url:
            raise ValueError(f"card {card.name!r}: file {f.path!r} has a relative url {f.url!r} but the card "
                             "has no base_url (and no --mirror was given)")
        return card.base_url.rstrip("/") + "/" + f.url.lstrip("/")
    rel = f.url
    if absolute:
        base = (card.base_url or "").rstrip("/") + "/"
        rel = f.url[len(base):] if card.base_url and f.url.startswith(base) else urllib.parse.urlparse(f.url).path
    m = str(mirror)
    if urllib.parse.urlparse(m).scheme in ("", "file") and not m.startswith("file:"):
        return str(Path(m) / rel.lstrip("/"))          # a plain directory
    return m.rstrip("/") + "/" + rel.lstrip("/")


def _open_source(src: str):
    """A binary stream and its size (or None) for a URL or a local path."""
    if urllib.parse.urlparse(src).scheme in ("http", "https", "file", "ftp"):
        try:
            r = urllib.request.urlopen(src, timeout=60)  # noqa: S310 (schemes checked above)
        except urllib.error.HTTPError as e:
            raise OSError(f"{src}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise OSError(f"{src}: cannot download: {e.reason}") from None
        size = r.headers.get("Content-Length") if hasattr(r, "headers") else None
        return r, int(size) if size and str(size).isdigit() else None
    p = Path(src)
    if not p.is_file():
        raise FileNotFoundError(f"{src}: not found in the mirror")
    return open(p, "rb"), p.stat().st_size


def download_file(src: str, target: Path, sha256: str | None, progress=None, label: str = "") -> str:
    """Stream ``src`` into ``target`` atomically, verifying ``sha256`` before the file appears.

    Returns the file's sha256. On a checksum mismatch nothing is left at ``target`` (nor any
    temporary file) and a ``ValueError`` names the file, the source and both digests.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    h = hashlib.sha256()
    task = None
    try:
        stream, size = _open_source(src)
        with stream, os.fdopen(fd, "wb") as out:
            if progress is not None:
                task = progress.add_task(label or target.name, total=size)
            for block in iter(lambda: stream.read(CHUNK), b""):
                h.update(block)
                out.write(block)
                if task is not None:
                    progress.advance(task, len(block))
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise ValueError(f"{target}: checksum mismatch for the file downloaded from {src}: expected sha256 "
                             f"{sha256}, got {digest}; the file was not kept")
        os.replace(tmp, target)
        return digest
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        if task is not None:
            progress.remove_task(task)


def fetch_dataset(name_or_card: str | Path, dest: str | Path, mirror: str | Path | None = None,
                  slices: list[str] | None = None, progress: bool = True) -> dict[str, str]:
    """Fetch every file of a dataset card into ``dest``.

    Parameters
    ----------
    name_or_card : card name (``datasets/<name>.yaml``) or path to a card.
    dest : destination directory; files go to ``dest/<file.path>`` (the reader's layout).
    mirror : replaces the card's ``base_url`` (``https://...``, ``file:///dir`` or a directory).
    slices : only files whose path names one of these slices (plus files naming no slice).
    progress : show a rich progress bar.

    Returns
    -------
    dict path -> status (``"present"``, ``"downloaded"``, ``"skipped"``).

    Files already present with the right checksum are not downloaded again. A present file
    with a wrong checksum is downloaded again. Raises ``ValueError`` naming the file on a
    checksum mismatch, ``FileNotFoundError``/``OSError`` when a source is unreachable, and
    ``ValueError`` listing required files that have no URL.
    """
    card = load_card(name_or_card)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"--dest {dest} exists and is not a directory")
    files = card.files
    if slices:
        unknown = [s for s in slices if card.slices and s not in card.slices]
        if unknown:
            raise ValueError(f"card {card.name!r}: slice(s) {unknown} not in its slices {card.slices}")
        others = [s for s in card.slices if s not in slices]
        files = [f for f in files if not any(_names_slice(f.path, s) for s in others)]
    if not files:
        raise ValueError(f"card {card.name!r}: no files to fetch")
    status: dict[str, str] = {}
    no_url = []
    todo: list[tuple[CardFile, Path, str]] = []
    for f in files:
        target = dest / f.path
        if target.is_file() and f.sha256 is not None and sha256_file(target) == f.sha256:
            status[f.path] = "present"
            continue
        if target.is_file() and f.sha256 is None:
            status[f.path] = "present"
            warnings.warn(f"{target}: card {card.name!r} has no sha256 for this file; kept unverified "
                          f"(sha256 {sha256_file(target)})")
            continue
        src = resolve_url(card, f, mirror)
        if src is None:
            if f.optional:
                status[f.path] = "skipped"
                warnings.warn(f"{target}: card {card.name!r} lists no public URL for this optional file; skipped")
            else:
                no_url.append(f.path)
            continue
        todo.append((f, target, src))
    with _progress(progress) as bar:
        for f, target, src in todo:
            try:
                digest = download_file(src, target, f.sha256, bar, label=f.path)
            except FileNotFoundError:
                if f.optional:
                    status[f.path] = "skipped"
                    warnings.warn(f"{target}: optional file not found at {src}; skipped")
                    continue
                raise
            if f.sha256 is None:
                warnings.warn(f"{target}: card {card.name!r} has no sha256 for this file; downloaded sha256 = {digest}")
            status[f.path] = "downloaded"
            log.info("fetched %s", target)
    for f in files:
        if f.unpack and status.get(f.path) in ("present", "downloaded"):
            if unpack_archive(dest / f.path, dest / f.unpack):
                status[f.path] += "+unpacked"
    if no_url:
        by_path = {f.path: f for f in files}
        steps = "\n".join(f"  - put it at {dest / p}" + (f"\n    how: {by_path[p].instructions}" if by_path[p].instructions
                                                          else "") for p in no_url)
        raise ValueError(f"card {card.name!r}: {len(no_url)} required file(s) have no direct public URL and are not in "
                         f"{dest}" + (" (the card says available_here: false)" if not card.available_here else "") +
                         f":\n{steps}\nthen run `spagraph fetch {card.name} --dest {dest}` again to verify and unpack")
    return status


def unpack_archive(archive: Path, into: Path) -> bool:
    """Unpack a .zip / .tar(.gz) into ``into`` (once: a ``.unpacked-<archive>`` marker records it);
    members that would land outside ``into`` (absolute paths, ``..``, links) are refused. Unpacked
    into a temporary folder first, then moved in, so a failure leaves nothing half-unpacked; an
    archive that wraps everything in one folder (``outs/``, ``spatial/`` ...) is unwrapped.
    Returns True when it unpacked."""
    import shutil
    import tarfile
    import tempfile
    import zipfile
    marker = into / f".unpacked-{archive.name}"
    if marker.exists():
        return False
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    p = Path(name)
                    if p.is_absolute() or ".." in p.parts:
                        raise ValueError(f"{archive}: member {name!r} would land outside {into}; not unpacked")
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")      # refuses absolute paths, '..' and links outside
        else:
            raise ValueError(f"{archive}: not a .zip or .tar archive; cannot unpack into {into}")
        top = tmp
        kids = list(tmp.iterdir())
        if len(kids) == 1 and kids[0].is_dir() and kids[0].name in (into.name, "outs"):
            top = kids[0]
        for child in list(top.iterdir()):
            target = into / child.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(child, target)
        marker.write_text(f"{archive.name}\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("unpacked %s into %s", archive, into)
    return True


def _names_slice(path: str, slice_name: str) -> bool:
    stem = Path(path).name
    return stem.startswith(f"{slice_name}.") or stem.startswith(f"{slice_name}_") or stem.startswith(f"{slice_name}-") \
        or slice_name in Path(path).parts[:-1]


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    transient=True)
