"""Run a benchmark suite: a YAML listing experiments (with overrides) and reference outputs.

Suite YAML::

    name: her2st
    set: [track.mode=disabled]          # optional, applied to every experiment entry first
    maps: false                         # optional, write per-slice maps for each run
    notes: ["..."]                      # optional, printed under the table
    compare_to: logreg (genes)          # optional: paired per-slice AUC differences against this entry
    entries:
      - name: spagraph                  # display name (and the output folder name)
        experiment: ../her2st_loso.yaml # path relative to the suite file (or the working dir)
        set: [model.msfa=false]         # optional --set style overrides
      - name: SpaCancer (shipped)
        reference: ../../../shared/reference/spacancer_sthbc_seed42
        experiment: ../her2st_loso.yaml # only its data section: which slices, which labels

Each entry runs with :func:`spagraph.experiment.runner.run_experiment` into ``OUT/<name>/``.
Resumable: an entry whose ``metrics.json`` exists with the same config hash is reused; an
interrupted entry continues its finished (fold, seed) pairs. Then ``OUT/table.md``,
``OUT/table.csv`` and ``OUT/per_slice_auc.png`` are written (with ``compare_to``, also
``OUT/paired.csv`` and a paired table in ``table.md``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from spagraph.utils import atomic_path, atomic_write_json, load_yaml, read_json

log = logging.getLogger("spagraph")

ENTRY_KEYS = {"name", "experiment", "set", "reference"}
SUITE_KEYS = {"name", "set", "maps", "notes", "entries", "compare_to"}


def _resolve(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    return base / path if (base / path).exists() or not path.exists() else path


def safe_name(name: str) -> str:
    import re
    s = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in str(name))
    return re.sub(r"_+", "_", s).strip("_.") or "entry"


def load_suite(path: str | Path) -> dict:
    """Read and check a suite YAML; paths resolved; each entry gets ``kind`` and ``dir``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    try:
        suite = load_yaml(path.read_text(), path) or {}      # duplicate keys refused
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("entries"), list) or not suite["entries"]:
        raise ValueError(f"{path}: a suite needs a non-empty 'entries:' list")
    extra = set(suite) - SUITE_KEYS
    if extra:
        raise ValueError(f"{path}: unknown suite key(s) {sorted(extra)}; known: {sorted(SUITE_KEYS)}")
    base = path.resolve().parent
    seen, entries = set(), []
    for i, e in enumerate(suite["entries"]):
        if not isinstance(e, dict) or "name" not in e:
            raise ValueError(f"{path}: entry {i} needs a 'name'")
        extra = set(e) - ENTRY_KEYS
        if extra:
            raise ValueError(f"{path}: entry {e['name']!r}: unknown key(s) {sorted(extra)}; known: {sorted(ENTRY_KEYS)}")
        if "experiment" not in e:
            raise ValueError(f"{path}: entry {e['name']!r} needs 'experiment' (a YAML; for a reference entry its data section)")
        d = safe_name(e["name"])
        if d in seen:
            raise ValueError(f"{path}: two entries share the folder name {d!r}; give them distinct names")
        seen.add(d)
        sets = list(suite.get("set") or []) + list(e.get("set") or [])
        ent = {"name": str(e["name"]), "dir": d, "experiment": _resolve(e["experiment"], base), "set": sets,
               "reference": _resolve(e["reference"], base) if e.get("reference") else None}
        if not ent["experiment"].is_file():
            raise FileNotFoundError(f"{path}: entry {e['name']!r}: experiment file not found: {ent['experiment']}")
        if ent["reference"] is not None and not ent["reference"].is_dir():
            raise FileNotFoundError(f"{path}: entry {e['name']!r}: reference directory not found: {ent['reference']}")
        entries.append(ent)
    ref = suite.get("compare_to")
    if ref is not None and ref not in {e["name"] for e in entries}:
        raise ValueError(f"{path}: compare_to {ref!r} names no entry; entries: {[e['name'] for e in entries]}")
    return {"name": suite.get("name", path.stem), "maps": bool(suite.get("maps", False)),
            "notes": list(suite.get("notes") or []), "entries": entries, "path": str(path), "compare_to": ref}


def _entry_kind(ent: dict, cfg) -> str:
    if ent["reference"] is not None:
        return "reference"
    if cfg.model_type == "baseline":
        return f"baseline:{(cfg.baseline or {}).get('kind')}"
    return "spagraph"


def _run_reference(ent: dict, cfg, out: Path) -> dict:
    from spagraph.bench.reference import score_reference
    from spagraph.experiment.data import load_slices
    t0 = time.time()
    slices, _ = load_slices(cfg.data, ent["experiment"].parent)
    metrics, pred = score_reference(ent["reference"], slices, cfg.data.label_key)
    metrics["config_hash"] = cfg.config_hash()
    metrics["scoring_time_s"] = round(time.time() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _run_entry(job: dict) -> dict:
    """One suite entry (an executor task): a reference scoring or a whole experiment run."""
    from spagraph.experiment.runner import run_experiment
    ent, cfg, edir = job["ent"], job["cfg"], Path(job["dir"])
    if ent["reference"] is not None:
        return _run_reference(ent, cfg, edir)
    stale = (edir / "config.yaml").exists() and _hash_of(edir / "config.yaml") != cfg.config_hash()
    return run_experiment(cfg, edir, resume=not stale, progress=job["progress"],
                          base_dir=ent["experiment"].parent, write_maps=job["maps"])


def run_suite(suite_path: str | Path, out_dir: str | Path, only: list[str] | None = None,
              progress: bool = False, executor=None) -> "pd.DataFrame":  # noqa: F821
    """Run (or reuse) every entry of a suite into ``out_dir/<name>/`` and write the tables.

    ``only``: names of entries to run now (the table still lists every entry already finished).
    ``executor``: where entries run (default: one after the other in this process; a
    :class:`~spagraph.experiment.executor.RayExecutor` runs them in parallel, one task each).
    Returns the table as a DataFrame (see :func:`spagraph.bench.table.suite_table`).
    """
    from spagraph.experiment.executor import map_tasks
    from spagraph.bench.table import write_tables
    from spagraph.experiment.config import load_config
    suite = load_suite(suite_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if only:
        unknown = set(only) - {e["name"] for e in suite["entries"]}
        if unknown:
            raise ValueError(f"--only {sorted(unknown)}: not entries of {suite_path}; "
                             f"entries: {[e['name'] for e in suite['entries']]}")
    results, jobs = [], []
    for ent in suite["entries"]:
        cfg = load_config(ent["experiment"], ent["set"])
        kind = _entry_kind(ent, cfg)
        edir = out / ent["dir"]
        mpath = edir / "metrics.json"
        done = None
        if mpath.exists():
            m = read_json(mpath, "suite entry metrics")
            if m.get("config_hash") == cfg.config_hash():
                done = m
            else:
                log.warning("suite entry %r: %s holds another config (hash %s, now %s): running again",
                            ent["name"], mpath, m.get("config_hash"), cfg.config_hash())
        if done is None and only and ent["name"] not in only:
            continue
        if done is None:
            log.info("suite entry %r (%s) -> %s", ent["name"], kind, edir)
            jobs.append((len(results), {"ent": ent, "cfg": cfg, "dir": str(edir), "progress": progress,
                                        "maps": suite["maps"]}))
        results.append([ent["name"], kind, done])
    if jobs:
        ran = map_tasks(_run_entry, [j for _, j in jobs], names=[f"suite entry {j['ent']['name']!r}" for _, j in jobs],
                        executor=executor)
        for (i, _), m in zip(jobs, ran):
            results[i][2] = m
    results = [tuple(r) for r in results]
    atomic_write_json(out / "suite.json", {"suite": suite["path"], "name": suite["name"],
                                           "entries": [{"name": n, "kind": k, "dir": safe_name(n)} for n, k, _ in results]})
    return write_tables(results, out, suite["notes"], compare_to=suite["compare_to"])


def _hash_of(config_yaml: Path) -> str | None:
    from spagraph.experiment.config import validate_config
    try:
        return validate_config(load_yaml(config_yaml.read_text(), config_yaml)).config_hash()
    except Exception:  # noqa: BLE001 - an unreadable old config simply means "not resumable"
        return None
