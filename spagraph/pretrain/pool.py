"""The unannotated pool for self-supervised pretraining, and the patient rule.

The patient rule (``../shared/data/README.md``): when a section of patient X is a test slice, no
other section of patient X may enter training, pretraining or any fitted statistic. It is
enforced here, in one function, :func:`allowed_sections`; every pool read of
:mod:`spagraph.pretrain` goes through :func:`read_allowed`, which calls it first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

HER2ST_PATIENT = r"^([A-Za-z]+)"


class PatientLeak(ValueError):
    """A pool section of a test slice's patient was asked for explicitly."""


def patient_of(name: str, pattern: str = HER2ST_PATIENT) -> str:
    """The patient of a section name: the first group of ``pattern`` (her2st: ``"C3" -> "C"``).
    A name the pattern does not match is an error (a section of unknown patient cannot be
    proven safe)."""
    m = re.match(pattern, str(name))
    if m is None or not m.groups() or not m.group(1):
        raise ValueError(f"section {name!r}: cannot tell its patient (pretrain.patient_pattern {pattern!r} "
                         "does not match it with a non-empty first group)")
    return m.group(1)


def same_patient(names: Iterable[str], test_slices: Iterable[str], pattern: str = HER2ST_PATIENT) -> list[str]:
    """The sections of ``names`` that a fold predicting ``test_slices`` may not use: those of a test
    slice's patient, and the test slices themselves (in ``names`` order). The patient rule itself;
    :func:`allowed_sections` and the image-gene pretraining's check both call it."""
    test = list(test_slices)
    banned = {patient_of(t, pattern) for t in test}
    return [n for n in names if patient_of(n, pattern) in banned or n in test]


def allowed_sections(test_slices: Iterable[str], pool: Iterable[str], explicit: Iterable[str] | None = None,
                     pattern: str = HER2ST_PATIENT) -> list[str]:
    """The pool sections that may be used while ``test_slices`` are being predicted.

    Parameters
    ----------
    test_slices : the test slice names of the fold (their patients are excluded).
    pool : every section name the pool holds.
    explicit : sections the configuration asks for by name (``pretrain.names``); None: the whole pool.
    pattern : regular expression giving a name's patient (:func:`patient_of`).

    Returns
    -------
    The allowed sections, in pool order: every pool section (or every ``explicit`` one) whose
    patient is not a test slice's patient, and that is not itself a test slice.

    Raises
    ------
    PatientLeak : an ``explicit`` section belongs to a test slice's patient.
    ValueError : an ``explicit`` section is not in the pool.
    """
    pool = list(dict.fromkeys(pool))
    test = list(test_slices)
    if explicit is not None:
        explicit = list(dict.fromkeys(explicit))
        unknown = [n for n in explicit if n not in pool]
        if unknown:
            raise ValueError(f"pretrain.names lists section(s) {unknown} that the pool does not hold; pool: {pool}")
        leak = same_patient(explicit, test, pattern)
        if leak:
            raise PatientLeak(f"pretrain.names lists {leak}, section(s) of the test patient(s) "
                              f"{sorted({patient_of(n, pattern) for n in leak})} (test slice(s) {test}): "
                              "no section of a test slice's patient may be used for pretraining "
                              "(patient rule, ../shared/data/README.md); drop them or leave pretrain.names unset")
        chosen = explicit
    else:
        chosen = pool
    banned = set(same_patient(chosen, test, pattern))
    return [n for n in chosen if n not in banned]


def list_pool(root: str | Path) -> list[str]:
    """Section names of a her2st-format pool (``root/counts/<S>.tsv.gz``), sorted."""
    root = Path(root)
    counts = root / "counts"
    if not counts.is_dir():
        raise FileNotFoundError(f"pretraining pool {root}: no counts/ folder (expected her2st format: "
                                "counts/<S>.tsv.gz and spots/<S>_selection.tsv)")
    names = sorted(p.name[: -len(".tsv.gz")] for p in counts.glob("*.tsv.gz"))
    if not names:
        raise FileNotFoundError(f"pretraining pool {root}: counts/ holds no <S>.tsv.gz file")
    return names


_MEMO: dict = {}


def read_section(root: str | Path, name: str):
    """One pool section as AnnData (her2st reader, no image; counts kept sparse), read once per
    process."""
    import scipy.sparse as sp
    from spagraph.io.her2st import read_her2st
    key = (str(Path(root).resolve()), name)
    if key not in _MEMO:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # 'selected = 0 spots dropped' notes: expected in the pool
            a = read_her2st(root, name, image=False)
        if not sp.issparse(a.X):
            a.X = sp.csr_matrix(a.X)
        _MEMO[key] = a
    return _MEMO[key]


def read_allowed(root: str | Path, test_slices: Iterable[str], explicit: Iterable[str] | None = None,
                 pattern: str = HER2ST_PATIENT,
                 reader: Callable[[str | Path, str], object] | None = None) -> dict:
    """{name: AnnData} of the pool sections :func:`allowed_sections` permits (only those are read)."""
    names = allowed_sections(test_slices, list_pool(root), explicit, pattern)
    if not names:
        raise ValueError(f"pretraining pool {root}: no section left once the test patient(s) of "
                         f"{list(test_slices)} are excluded")
    read = reader or read_section
    return {n: read(root, n) for n in names}
