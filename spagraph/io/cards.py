"""Dataset cards (``datasets/<name>.yaml``): where a dataset's files come from, their sha256,
the local layout the reader expects, and the label mapping. See ``datasets/README.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spagraph.io.labels import LabelSchema

#: Where the cards shipped with spagraph live (repository root / datasets).
CARDS_DIR = Path(__file__).resolve().parents[2] / "datasets"

READERS = ("her2st", "spaceranger", "h5ad", "xenium", "visium_hd", "spatialdata")


class CardFile(BaseModel):
    """One file of a dataset.

    path : local path under the fetch destination (the reader's layout), e.g. ``counts/A1.tsv.gz``.
    url : absolute URL, or a path relative to the card's ``base_url``; ``None`` when no public
        URL is known (the file must be put in place by hand).
    sha256 : hex digest of the file as stored locally (``None``: not known yet; fetch prints it).
    optional : a missing optional file is skipped with a warning instead of an error.
    instructions : how to get a file that has no direct URL (login, form, manual export); printed by
        ``spagraph fetch`` together with the exact destination path.
    unpack : after the file is in place (and verified), unpack this archive (.zip / .tar.gz) into this
        folder under the destination (relative); skipped when the folder already holds files.
    """
    model_config = ConfigDict(extra="forbid")
    path: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    optional: bool = False
    instructions: Optional[str] = None
    unpack: Optional[str] = None

    @field_validator("path", "unpack")
    @classmethod
    def _relative(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or not v.strip():
            raise ValueError(f"file path {v!r} must be relative to the destination, without '..'")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError(f"sha256 {v!r} is not 64 hex digits")
        return v


class DatasetCard(BaseModel):
    """A dataset card (YAML). ``files`` is required; everything else documents the dataset."""
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str = ""
    description: str = ""
    source: str = ""
    citation: str = ""
    homepage: Optional[str] = None
    license: Optional[str] = None
    platform: Literal["legacy_st", "visium", "xenium", "other"] = "other"
    reader: Optional[str] = None
    available_here: bool = False
    base_url: Optional[str] = None
    slices: list[str] = Field(default_factory=list)
    layout: dict[str, str] = Field(default_factory=dict)
    label_mapping: Optional[dict] = None
    reader_options: dict = Field(default_factory=dict)   # keyword arguments of the reader (e.g. bin_um, grid)
    annotation: Optional[str] = None                     # per-slice annotation CSV under the root, "{slice}" expands
    files: list[CardFile]
    notes: str = ""

    @field_validator("reader")
    @classmethod
    def _reader(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in READERS:
            raise ValueError(f"reader {v!r} unknown; one of {list(READERS)}")
        return v

    def label_schema(self) -> LabelSchema:
        """The card's ``label_mapping`` as a :class:`LabelSchema` (default her2st schema if absent)."""
        return LabelSchema.from_dict(self.label_mapping)


def find_card(name_or_path: str | Path) -> Path:
    """Resolve a card name (``her2st``) or a path to a YAML file."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"dataset card not found: {p}")
        if p.is_dir():
            raise ValueError(f"{p}: is a directory, expected a dataset card (.yaml)")
        return p
    for d in (Path.cwd() / "datasets", CARDS_DIR):
        c = d / f"{name_or_path}.yaml"
        if c.exists():
            return c
    known = sorted(x.stem for x in CARDS_DIR.glob("*.yaml")) if CARDS_DIR.is_dir() else []
    raise FileNotFoundError(f"no dataset card named {str(name_or_path)!r} (looked in ./datasets and {CARDS_DIR}); "
                            f"known cards: {known}")


def load_card(name_or_path: str | Path) -> DatasetCard:
    """Read and validate a dataset card; errors name the card file and the bad field."""
    import yaml
    from spagraph.utils import load_yaml
    path = find_card(name_or_path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), path)     # duplicate keys refused
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a dataset card must be a YAML mapping, got {type(raw).__name__}")
    if "files" not in raw:
        raise ValueError(f"{path}: dataset card is missing the required field 'files' (list of path/url/sha256)")
    try:
        card = DatasetCard(**raw)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path}: invalid dataset card: {msgs}") from None
    if card.label_mapping is not None:
        try:
            card.label_schema()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: label_mapping: {e}") from None
    dup = {f.path for f in card.files if sum(g.path == f.path for g in card.files) > 1}
    if dup:
        raise ValueError(f"{path}: files listed twice: {sorted(dup)}")
    return card


def read_card(card: str | Path, root: str | Path, slices: list[str] | None = None) -> dict:
    """Read the slices of a fetched dataset: name -> AnnData, with the card's label mapping.

    Parameters
    ----------
    card : card name or path. root : the ``dest`` that ``spagraph fetch`` wrote to.
    slices : subset of the card's ``slices`` (default all).
    """
    c = load_card(card)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root for card {c.name!r} not found: {root} (run `spagraph fetch {c.name} "
                                f"--dest {root}` first)")
    names = list(slices or c.slices)
    unknown = [s for s in names if s not in c.slices]
    if unknown:
        raise ValueError(f"card {c.name!r}: slice(s) {unknown} not in its slices {c.slices}")
    if not names:
        raise ValueError(f"card {c.name!r} lists no slices")
    schema = c.label_schema()
    if c.reader == "her2st":
        from spagraph.io.her2st import read_her2st
        return {s: read_her2st(root, s, label_schema=schema) for s in names}
    if c.reader == "h5ad":
        from spagraph.io.readers import read_h5ad
        return {s: read_h5ad(root / f"{s}.h5ad") for s in names}
    if c.reader == "spaceranger":
        from spagraph.io.readers import read_spaceranger
        out = {}
        for s in names:
            ann = root / (c.annotation or "{slice}/annotation.csv").format(slice=s)
            out[s] = read_spaceranger(root / s, annotation_csv=ann if ann.exists() else None,
                                      label_schema=schema, library_id=s)
        return out
    if c.reader in ("xenium", "visium_hd", "spatialdata"):
        from spagraph.io.platforms import read_platform
        out = {}
        for s in names:
            opt = dict(c.reader_options)
            for k in ("he_image", "he_alignment"):
                if k in opt:
                    opt[k] = root / str(opt[k]).format(slice=s)
            if c.reader != "spatialdata":
                ann = root / (c.annotation or "{slice}/annotation.csv").format(slice=s)
                opt["annotation"] = ann if ann.exists() else None
                opt["label_schema"] = schema
            else:
                opt["label_schema"] = schema
            out[s] = read_platform(c.reader, root / (s if c.reader != "spatialdata" else f"{s}.zarr"), library_id=s, **opt)
        return out
    raise ValueError(f"card {c.name!r}: reader {c.reader!r} has no loader in spagraph.io yet")
