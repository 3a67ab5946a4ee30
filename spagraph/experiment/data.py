"""Turn the ``data`` section of an experiment into named slices and protocol folds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spagraph.experiment.config import DataConfig, ExperimentConfig, SliceSource


def resolve_path(p: str, base: Path | None = None, must_exist: bool = True) -> Path:
    """A path from a YAML: absolute, else relative to ``base`` (the YAML's folder), else to the
    working directory. When none exists (and ``must_exist``), FileNotFoundError names every path tried."""
    path = Path(p).expanduser()
    if path.is_absolute():
        tried = [path]
    else:
        tried = ([base / path] if base is not None else []) + [Path.cwd() / path]
    for t in tried:
        if t.exists():
            return t
    if must_exist:
        raise FileNotFoundError(f"data path {p!r} not found; tried " + ", ".join(str(t.resolve()) for t in tried))
    return tried[0]


def load_source(src: SliceSource, base: Path | None = None) -> dict:
    """Read (or generate) the slices of one source: name -> AnnData."""
    import spagraph.io as sio
    if src.reader == "her2st":
        root = resolve_path(src.root, base)
        return {n: sio.read_her2st(root, n) for n in src.names}
    if src.reader == "spaceranger":
        a = sio.read_spaceranger(resolve_path(src.path, base),
                                 annotation_csv=resolve_path(src.annotation, base) if src.annotation else None)
        return {src.name or Path(src.path).name: a}
    if src.reader == "h5ad":
        p = resolve_path(src.path, base)
        return {src.name or p.stem: sio.read_h5ad(p)}
    if src.reader in ("xenium", "visium_hd", "spatialdata"):
        from spagraph.io.platforms import read_platform
        p = resolve_path(src.path, base)
        opt = {"annotation": resolve_path(src.annotation, base) if src.annotation else None}
        if src.reader == "xenium":
            opt.update(bin_um=src.bin_um or 50.0, grid=src.bins,
                       he_image=resolve_path(src.he_image, base) if src.he_image else None,
                       he_alignment=resolve_path(src.he_alignment, base) if src.he_alignment else None)
        elif src.reader == "visium_hd":
            opt.update(bin_um=int(src.bin_um or 16))
        else:
            opt = {"table": src.table, "region": src.region, "label_key": src.annotation_key}
        default = p.parent.name if p.name == "outs" else p.name.split(".")[0]
        return {src.name or default: read_platform(src.reader, p, **opt)}
    if src.reader == "card":
        from spagraph.io.cards import read_card
        return read_card(src.card, resolve_path(src.root, base, must_exist=False), src.names)   # its error says how to fetch
    if src.reader != "synthetic":
        raise ValueError(f"unknown reader {src.reader!r}")
    from spagraph.io.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(src.n_slices, seed=src.seed, n_spots=src.n_spots, grid=src.grid,
                                  with_image=src.with_image, batch_effect=src.batch_effect,
                                  prefix=f"{src.group}_" if src.group != "default" else "syn")


def load_slices(data: DataConfig, base: Path | None = None) -> tuple[dict, dict[str, str]]:
    """All slices of an experiment (name -> AnnData) and their groups (name -> group)."""
    slices, groups = {}, {}
    for src in data.sources:
        for name, a in load_source(src, base).items():
            if name in slices:
                raise ValueError(f"slice name {name!r} appears twice in data.sources; give sources distinct names")
            slices[name], groups[name] = a, src.group
    return slices, groups


@dataclass
class Fold:
    name: str
    train: list[str]
    val: list[str]
    test: list[str]


def plan_folds(cfg: ExperimentConfig, names: list[str], groups: dict[str, str]) -> list[Fold]:
    """Folds of the configured protocol. Validation is always whole slices."""
    kind, n_val, d = cfg.protocol.kind, cfg.protocol.n_val, cfg.data
    if kind == "loso":
        if len(names) < 3:
            raise ValueError(f"leave-one-slice-out needs at least 3 slices (train, validation, test); got {len(names)}")
        folds = []
        for i, t in enumerate(names):
            rest = names[i + 1:] + names[:i]          # cyclic order after the test slice
            val = rest[:min(n_val, len(rest) - 1)]
            folds.append(Fold(t, [r for r in rest if r not in val], val, [t]))
        return folds
    if kind == "fit":
        return [fit_fold(names, n_val, d.train, d.validate_)]
    if kind == "fixed":
        for key, lst in (("train", d.train), ("test", d.test)):
            if not lst:
                raise ValueError(f"protocol 'fixed' needs data.{key}")
        used = (d.train or []) + (d.validate_ or []) + (d.test or [])
        missing = [n for n in used if n not in names]
        if missing:
            raise ValueError(f"data.train/validate/test name unknown slices {missing}; known: {names}")
        overlap = set(d.test) & (set(d.train) | set(d.validate_ or []))
        if overlap:
            raise ValueError(f"slices {sorted(overlap)} are both test and train/validation")
        return [Fold("fixed", list(d.train), list(d.validate_ or []), list(d.test))]
    # transfer
    src = [n for n in names if groups[n] == d.source_group]
    tgt = [n for n in names if groups[n] == d.target_group]
    if not src or not tgt:
        raise ValueError(f"protocol 'transfer' needs data.source_group and data.target_group naming source groups; "
                         f"got source={d.source_group!r} ({len(src)} slices), target={d.target_group!r} ({len(tgt)} slices); "
                         f"groups present: {sorted(set(groups.values()))}")
    val = src[-min(n_val, len(src) - 1):] if len(src) > 1 else []
    return [Fold(f"{d.source_group}->{d.target_group}", [s for s in src if s not in val], val, tgt)]


def fit_fold(names: list[str], n_val: int = 1, train: list[str] | None = None,
             validate: list[str] | None = None) -> Fold:
    """The single fold of protocol ``fit`` (training a model for deployment).

    Validation is whole held-out slices: ``data.validate`` when given, else the last ``n_val``
    listed slices; training is every other slice (``data.train`` when given). There is no test
    slice. Why held-out slices rather than an inner leave-one-slice-out ensemble: early stopping
    and the validation threshold rules then see a slice the model never trained on, exactly as in
    the ``loso`` evaluation whose numbers describe the method, and one fit per seed keeps the cost
    of ``fit`` at that of one ``loso`` fold. The price: the validation slices' labels train nothing.
    """
    if validate:
        val = list(validate)
    else:
        if len(names) < 2:
            raise ValueError(f"protocol 'fit' needs at least 2 slices (training + {n_val} whole validation "
                             f"slice(s)); got {len(names)}: {names}")
        val = names[-min(n_val, len(names) - 1):]
    tr = list(train) if train else [n for n in names if n not in val]
    unknown = [n for n in tr + val if n not in names]
    if unknown:
        raise ValueError(f"data.train/validate name unknown slices {unknown}; known: {names}")
    overlap = set(tr) & set(val)
    if overlap:
        raise ValueError(f"slices {sorted(overlap)} are both training and validation slices")
    if not tr:
        raise ValueError("protocol 'fit': no training slice left after holding out the validation slices")
    return Fold("fit", tr, val, [])
