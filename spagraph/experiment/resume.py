"""Resume keyed on content: every per-task result and checkpoint records what it was computed from.

A finished (fold, seed) writes ``folds/<fold>_s<seed>.json`` with ``config_hash``, ``config`` (the
resolved config, minus ``out`` / ``track`` / ``search``) and ``inputs`` (a content digest of every
slice the fold reads and the size/mtime of any weights file the encoders load). An epoch checkpoint
``checkpoints/<fold>_s<seed>.pt`` carries the same ``config_hash`` and ``inputs``.

``--resume`` compares them with the current run before anything is computed. A mismatch refuses
with :class:`ResumeMismatch` naming the files and the config keys (old -> new) or slices that
differ; with ``recompute_changed=True`` those results and checkpoints are deleted and recomputed,
the others reused. Files written before this scheme (no ``config_hash``) are judged by the run's
``config.yaml``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("spagraph")

IGNORED_KEYS = ("out", "track", "search")


class ResumeMismatch(ValueError):
    """``--resume`` found results computed from another config or other data."""


def hashed_config(cfg) -> dict:
    d = cfg.to_dict()
    for k in IGNORED_KEYS:
        d.pop(k, None)
    return d


def flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
    else:
        out[prefix[:-1]] = d
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """``["model.hidden: 16 -> 32", ...]`` for every dotted key whose value differs."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.split(".")[0] in IGNORED_KEYS:
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            out.append(f"{k}: {va!r} -> {vb!r}")
    return out


def input_digests(cfg, slices: dict) -> dict:
    """``{"slices": {name: content hash}, "weights": {setting: "size:mtime_ns"}}``."""
    from spagraph.embed.cache import slice_hash
    weights = {}
    for key in ("weights", "omiclip_weights", "text_model"):
        v = (cfg.embed.settings or {}).get(key)
        if isinstance(v, str) and Path(v).expanduser().is_file():
            st = Path(v).expanduser().stat()
            weights[key] = f"{st.st_size}:{st.st_mtime_ns}"
    return {"slices": {n: slice_hash(a) for n, a in slices.items()}, "weights": weights}


def fold_inputs(digests: dict, names: list[str]) -> dict:
    """The part of :func:`input_digests` one fold reads."""
    return {"slices": {n: digests["slices"][n] for n in names if n in digests["slices"]},
            "weights": dict(digests["weights"])}


def _input_diff(old: dict | None, new: dict) -> list[str]:
    if not old:
        return []
    out = []
    for n, h in new.get("slices", {}).items():
        o = old.get("slices", {}).get(n)
        if o is not None and o != h:
            out.append(f"slice {n}: content changed")
    for k, v in new.get("weights", {}).items():
        o = old.get("weights", {}).get(k)
        if o != v:
            out.append(f"embed.settings.{k}: weights file changed")
    return out


def _old_run_config(out: Path) -> dict | None:
    from spagraph.utils import load_yaml
    from spagraph.experiment.config import validate_config
    p = out / "config.yaml"
    if not p.exists():
        return None
    try:
        return hashed_config(validate_config(load_yaml(p.read_text(), p)))
    except Exception:  # noqa: BLE001 - an unreadable old config: nothing to compare against
        return None


def check_resume(cfg, out: Path, folds, seeds, digests: dict, recompute_changed: bool = False) -> list[str]:
    """Compare every stored result / checkpoint in ``out`` with this run; see the module docstring.

    Returns the task keys whose stored state was found stale and removed (``recompute_changed``);
    raises :class:`ResumeMismatch` otherwise when any is stale.
    """
    import torch
    from spagraph.experiment.runner import _safe
    new_cfg, new_hash = hashed_config(cfg), cfg.config_hash()
    legacy_cfg = None
    stale: dict[str, list[str]] = {}       # task key -> reasons
    paths: dict[str, list[Path]] = {}
    for fold in folds:
        names = fold.train + fold.val + fold.test
        want = fold_inputs(digests, names)
        for seed in seeds:
            key = f"{_safe(fold.name)}_s{seed}"
            jpath, cpath, ckpt = out / "folds" / f"{key}.json", out / "folds" / f"{key}.csv", out / "checkpoints" / f"{key}.pt"
            records = []
            if jpath.exists():
                try:
                    rec = json.loads(jpath.read_text())
                except (OSError, ValueError) as e:
                    raise ResumeMismatch(f"cannot resume {out}: {jpath} is unreadable ({e}); delete it to recompute "
                                         "that fold") from None
                records.append((jpath, rec.get("config_hash"), rec.get("config"), rec.get("inputs")))
            if ckpt.exists():
                try:
                    st = torch.load(ckpt, map_location="cpu", weights_only=True)
                    records.append((ckpt, st.get("config_hash"), st.get("config"), st.get("inputs")))
                except Exception as e:  # noqa: BLE001 - a torn checkpoint is recomputed, not fatal
                    log.warning("checkpoint %s unreadable (%s): that fit restarts from epoch 0", ckpt, e)
                    ckpt.unlink(missing_ok=True)
            for path, h, old_cfg, old_inputs in records:
                if h is None:                           # written before results carried their hash
                    if legacy_cfg is None:
                        legacy_cfg = _old_run_config(out) or {}
                    old_cfg = legacy_cfg
                    h = new_hash if old_cfg == new_cfg else "unknown"
                reasons = []
                if h != new_hash:
                    reasons += config_diff(old_cfg or {}, new_cfg) or [f"config hash {h} -> {new_hash}"]
                reasons += _input_diff(old_inputs, want)
                if reasons:
                    stale.setdefault(key, [])
                    stale[key] += [r for r in reasons if r not in stale[key]]
                    paths.setdefault(key, []).append(path)
                    if path == jpath:
                        paths[key].append(cpath)
    if not stale:
        return []
    all_reasons: list[str] = []
    for r in stale.values():
        all_reasons += [x for x in r if x not in all_reasons]
    if not recompute_changed:
        keys = sorted(stale)
        raise ResumeMismatch(
            f"cannot resume {out}: {len(keys)} stored result(s)/checkpoint(s) ({', '.join(keys[:6])}"
            f"{', ...' if len(keys) > 6 else ''}) were computed with another config or other data; differences: "
            + "; ".join(all_reasons[:12]) + ("; ..." if len(all_reasons) > 12 else "")
            + ". Use another --out, rerun without --resume to start over, or add --recompute-changed to "
              "recompute only those folds")
    for key, ps in paths.items():
        for p in ps:
            Path(p).unlink(missing_ok=True)
    log.warning("resume: recomputing %d fold/seed result(s) whose config or data changed (%s)",
                len(stale), "; ".join(all_reasons[:6]))
    return sorted(stale)
