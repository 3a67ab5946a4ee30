"""A trained model as one self-describing folder, and prediction on a new slice with it.

``save_model(model, cfg, graphs, fold, path)`` writes::

    path/model.pt           state_dict of the SpaGraphNet
    path/config.yaml        the resolved experiment config
    path/meta.json          model dims, settings, encoder names, fold, config hash, validation threshold
    path/gene_encoder.pt    fitted gene-encoder state (fitted on the fold's training slices only)
    path/val_scores.npy     validation-slice scores: the distribution used for quantile matching
    path/extra.pt           optional further state (``save_model(..., extra={name: state})``, plain
                            tensors / lists / dicts), e.g. calibration; ``SavedModel.extra`` on load
    path/model_card.md      training slices, validation metrics, date, package versions

Every ``.pt`` file holds plain tensors / lists / dicts / numbers / strings only and is read with
``torch.load(weights_only=True)``: loading a model folder never unpickles arbitrary objects.
meta.json records the package versions (torch, torch_geometric, scanpy, anndata, spagraph).

``load_model(path)`` returns a :class:`SavedModel`; ``load_models(path)`` also accepts a folder
of such folders (a seed ensemble, e.g. ``RUN/models/``).

``predict_slice(models, adata)`` embeds the slice with the saved preprocessing (transform only),
builds its graph, scores it (eval mode), estimates uncertainty (std over MC-dropout passes and
ensemble members), calibrates and thresholds it with the saved decision state (``meta["decide"]``: calibration map
fitted on validation slices, the fold's rule; :mod:`spagraph.decide`), draws regions and risk, and writes them into ``adata.obs`` / ``adata.uns["spagraph"]``.
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spagraph.utils import atomic_dir, atomic_path, atomic_write_json, write_h5ad

log = logging.getLogger("spagraph")

FORMAT_VERSION = 1
FILES = ("model.pt", "config.yaml", "meta.json", "val_scores.npy")


@dataclass
class SavedModel:
    path: Path
    model: torch.nn.Module
    cfg: object                    # ExperimentConfig
    meta: dict
    val_scores: np.ndarray
    gene_encoder: object | None = None
    extra: dict = field(default_factory=dict)

    @property
    def val_threshold(self) -> float:
        return float(self.meta["val_threshold"])

    @property
    def config_hash(self) -> str:
        return str(self.meta["config_hash"])


# ------------------------------------------------------------------ save


def _validation_threshold(model, graphs: dict, fold, ts) -> tuple[np.ndarray, float, float]:
    """The validation slices' scores, F1-optimal and Youden-optimal thresholds, exactly as the
    runner chooses them."""
    from spagraph.train.fit import predict_scores
    from spagraph.train.metrics import validation_thresholds
    if not fold.val:
        return np.zeros(0), 0.5, 0.5
    vs = np.concatenate([predict_scores(model, graphs[n], ts) for n in fold.val])
    vy = np.concatenate([graphs[n].y.numpy() for n in fold.val])
    return (vs, *validation_thresholds(vy, vs))


def _decision_meta(cfg, graphs: dict, fold, vs: np.ndarray) -> dict:
    """Calibration state (validation slices only) and the fold's rule, as plain JSON."""
    from spagraph.decide.core import fit_state
    from spagraph.decide.evaluate import calibration_extra, fold_rule
    vy = np.concatenate([graphs[n].y.numpy() for n in fold.val]) if fold.val else np.zeros(0)
    state = fit_state(vy, vs, cfg.threshold.fixed, cfg.threshold.calibration, list(fold.val),
                      extra=calibration_extra(cfg, graphs, fold))
    rule, choice = fold_rule(cfg, graphs, fold)
    return {**state.to_dict(), "rule": rule, "rule_choice": choice}


def _fit_gene_encoder(cfg, fold, slices: dict | None, base_dir: Path | None):
    from spagraph.embed.gene import fit_gene_encoder
    if slices is None:
        from spagraph.experiment.data import load_slices
        slices, _ = load_slices(cfg.data, base_dir)
    missing = [n for n in fold.train if n not in slices]
    if missing:
        raise ValueError(f"cannot refit the gene encoder: training slices {missing} are not available")
    return fit_gene_encoder(cfg.embed.gene_encoder, [slices[n] for n in fold.train], dict(cfg.embed.settings))


def package_versions() -> dict[str, str]:
    """Versions of the packages a saved model depends on (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("spagraph", "torch", "torch_geometric", "scanpy", "anndata", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    if out["spagraph"] is None:
        import spagraph
        out["spagraph"] = spagraph.__version__
    return out


def to_plain(obj):
    """numpy arrays -> tensors, recursively through dicts / lists / tuples (for weights_only loading)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot save {type(obj).__name__} in a model folder: only tensors, arrays, lists, dicts, "
                    "numbers and strings (no pickled objects)")


def model_card(meta: dict, val_metrics: list[dict] | None = None) -> str:
    """A short markdown card: what the model was trained on, how it did on validation, when."""
    f = meta.get("fold", {})
    lines = [f"# spagraph model: {meta.get('experiment', '')}", "",
             f"- saved: {meta.get('saved_at', '')}",
             f"- protocol: {meta.get('protocol', '')}; seed {meta.get('seed')}; config hash {meta.get('config_hash')}",
             f"- training slices: {', '.join(f.get('train', [])) or '-'}",
             f"- validation slices (early stopping, threshold): {', '.join(f.get('val', [])) or '-'}",
             f"- test slices: {', '.join(f.get('test', [])) or 'none'}",
             f"- encoders: image {meta.get('image_encoder')}, genes {meta.get('gene_encoder')} "
             f"({meta.get('n_genes', 0)} genes)",
             f"- threshold rule: {meta.get('threshold_method')} (validation F1 threshold {meta.get('val_threshold', 0):.4f}, "
             f"Youden {meta.get('youden_threshold', 0):.4f})",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()), ""]
    if val_metrics:
        role = val_metrics[0].get("role", "test")
        lines += [f"## Metrics on {role} slices" + (" (seen by early stopping and the threshold: optimistic)"
                                                    if role == "validation" else ""), "",
                  "| slice | AUC | AP | F1 |", "|---|---|---|---|"]
        for r in val_metrics:
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {r.get('slice')} | {fmt(r.get('auc'))} | {fmt(r.get('ap'))} | {fmt(r.get('f1'))} |")
        lines.append("")
    return "\n".join(lines)


def ensemble_card(folder: Path, metrics: dict | None = None) -> str:
    """The card of a seed ensemble folder (``OUT/model``): its members and mean validation metrics."""
    metas = [json.loads((p / "meta.json").read_text()) for p in sorted(Path(folder).iterdir())
             if p.is_dir() and (p / "meta.json").exists()]
    if not metas:
        return ""
    m0 = metas[0]
    f = m0.get("fold", {})
    lines = [f"# spagraph model ensemble: {m0.get('experiment', '')}", "",
             f"- members: {len(metas)} (seeds {', '.join(str(m.get('seed')) for m in metas)}); scores are averaged",
             f"- saved: {m0.get('saved_at', '')}; config hash {m0.get('config_hash')}",
             f"- training slices: {', '.join(f.get('train', []))}",
             f"- validation slices: {', '.join(f.get('val', []))}",
             f"- threshold rule: {m0.get('threshold_method')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in (m0.get("versions") or {}).items()), ""]
    if metrics and metrics.get("mean"):
        mean = metrics["mean"]
        lines += [f"Mean over {metrics.get('evaluated_on', 'slices')} x seeds: "
                  + ", ".join(f"{k} {mean[k]:.3f}" for k in ("auc", "ap", "f1") if mean.get(k) is not None), ""]
    lines.append("Use: `spagraph predict THIS_FOLDER SLICE... --out DIR` or `spagraph.load_model(THIS_FOLDER)`.")
    return "\n".join(lines) + "\n"


def save_model(model, cfg, graphs: dict, fold, path: str | Path, slices: dict | None = None,
               gene_encoder=None, base_dir: Path | None = None, seed: int | None = None,
               val_metrics: list[dict] | None = None, extra: dict | None = None) -> Path:
    """Write one folder holding everything ``spagraph predict`` needs (module docstring).

    The gene encoder is ``gene_encoder`` when given, else refitted with
    ``fit_gene_encoder(cfg.embed.gene_encoder, <fold's training slices>, cfg.embed.settings)`` on
    ``slices`` (re-read from ``cfg.data`` when not given). Validation scores and threshold are
    recomputed from ``graphs`` (deterministic eval-mode scores of the fold's validation slices).
    ``val_metrics``: rows for the model card. ``extra``: ``{name: state}`` of further plain state
    (tensors / arrays / lists / dicts) saved in ``extra.pt`` and returned as ``SavedModel.extra``.
    """
    import datetime
    from spagraph.experiment.config import dump_config
    from spagraph.experiment.runner import train_settings
    path = Path(path)
    ts = train_settings(cfg)
    vs, vthr, jthr = _validation_threshold(model, graphs, fold, ts)
    if gene_encoder is None and getattr(model, "d_gene", 0) > 0:
        gene_encoder = _fit_gene_encoder(cfg, fold, slices, base_dir)
    g0 = graphs[fold.train[0]]
    meta = {
        "format_version": FORMAT_VERSION,
        "config_hash": cfg.config_hash(),
        "experiment": cfg.name,
        "d_img": int(model.d_img), "d_gene": int(model.d_gene),
        "n_scales": int(g0.num_scales), "n_bins": int(g0.n_dir_bins),
        "model_settings": dict(vars(model.settings)),
        "graph": cfg.graph.model_dump(), "label_key": cfg.data.label_key,
        "image_encoder": cfg.embed.image_encoder, "gene_encoder": cfg.embed.gene_encoder,
        "embed_settings": dict(cfg.embed.settings),
        "gene_encoder_class": (f"{type(gene_encoder).__module__}:{type(gene_encoder).__qualname__}"
                               if gene_encoder is not None else None),
        "fold": {"name": fold.name, "train": list(fold.train), "val": list(fold.val), "test": list(fold.test)},
        "seed": seed,
        "val_threshold": float(vthr), "youden_threshold": float(jthr), "n_val_scores": int(len(vs)),
        "threshold_method": cfg.threshold.method, "threshold_fixed": cfg.threshold.fixed,
        "protocol": cfg.protocol.kind, "n_genes": len(getattr(gene_encoder, "genes", []) or []),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": package_versions(), "extra_keys": sorted(extra or {}),
        "decide": _decision_meta(cfg, graphs, fold, vs),
    }
    with atomic_dir(path) as d:        # all files or none: a failure keeps the previous folder whole
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / "model.pt")
        if gene_encoder is not None:
            torch.save(to_plain(gene_encoder.state_dict()), d / "gene_encoder.pt")
        if extra:
            torch.save(to_plain(dict(extra)), d / "extra.pt")
        (d / "model_card.md").write_text(model_card(meta, val_metrics))
        with open(d / "val_scores.npy", "wb") as fh:
            np.save(fh, np.asarray(vs, dtype=np.float64))
        dump_config(cfg, d / "config.yaml")
        atomic_write_json(d / "meta.json", meta)          # last: its presence marks a complete folder
    return path


# ------------------------------------------------------------------ load


def _restore_gene_encoder(meta: dict, state):
    cls_path = meta.get("gene_encoder_class")
    if not cls_path:
        return None
    mod, _, qual = cls_path.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"saved gene encoder class {cls_path} cannot be imported: {e}") from None
    if hasattr(obj, "from_state_dict"):
        return obj.from_state_dict(state)
    gene = importlib.import_module("spagraph.embed.gene")
    if hasattr(gene, "from_state_dict"):
        return gene.from_state_dict(state)
    raise ValueError(f"gene encoder class {cls_path} has no from_state_dict()")


def load_model(path: str | Path, device: str = "cpu") -> SavedModel:
    """Load one saved model folder (weights, config, preprocessing, validation scores)."""
    from spagraph.experiment.config import load_config
    from spagraph.nn.model import ModelSettings, SpaGraphNet
    path = Path(path)
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a saved spagraph model: missing {', '.join(missing)}")
    from spagraph.train.model_files import load_gene_state, load_val_scores, load_weights, read_meta
    meta = read_meta(path / "meta.json")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: saved with format {meta['format_version']}, this spagraph reads <= {FORMAT_VERSION}")
    cfg = load_config(path / "config.yaml")
    if cfg.config_hash() != meta["config_hash"]:
        raise ValueError(f"{path}: config.yaml hash {cfg.config_hash()} != recorded {meta['config_hash']} "
                         "(config edited after saving?)")
    try:
        model = SpaGraphNet(meta["d_img"], meta["d_gene"], meta["n_scales"], meta["n_bins"],
                            ModelSettings(**meta["model_settings"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / 'meta.json'}: model dims / model_settings do not build a model: {e}") from None
    state = load_weights(path / "model.pt", "model weights", device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / 'model.pt'}: weights do not match the model described in meta.json: "
                         f"{str(e).strip().splitlines()[0][:300]}") from None
    model.to(device).eval()
    ge = None
    if (path / "gene_encoder.pt").exists():
        try:
            ge = _restore_gene_encoder(meta, load_gene_state(path / "gene_encoder.pt"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path / 'gene_encoder.pt'}: incomplete gene encoder state (missing {e})") from None
    extra = load_weights(path / "extra.pt", "extra model state") if (path / "extra.pt").exists() else {}
    return SavedModel(path=path, model=model, cfg=cfg, meta=meta, val_scores=load_val_scores(path / "val_scores.npy"),
                      gene_encoder=ge, extra=extra)


def load_models(path: str | Path, device: str = "cpu") -> list[SavedModel]:
    """One saved model folder, or a folder of them (a seed ensemble sharing one config hash)."""
    path = Path(path)
    if (path / "meta.json").exists():
        return [load_model(path, device)]
    subs = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (p / "meta.json").exists()) if path.is_dir() else []
    if not subs:
        raise FileNotFoundError(f"{path}: no saved model here (expected model.pt + meta.json, or sub-folders holding them)")
    models = [load_model(p, device) for p in subs]
    hashes = {m.config_hash for m in models}
    if len(hashes) > 1:
        raise ValueError(f"{path}: saved models come from different configs {sorted(hashes)}; ensemble one config at a time")
    return models


# ------------------------------------------------------------------ predict


def embed_for_prediction(adata, saved: SavedModel, name: str = "slice", gene_aliases=None,
                         max_missing_weight: float | None = None):
    """Embeddings of a new slice with the saved preprocessing: the saved gene encoder transforms
    (never refits); the image encoder (pretrained / handcrafted, nothing fitted on labels) is run
    by name. Writes ``obsm["gene_emb"]`` / ``obsm["img_emb"]`` in place.

    The slice's genes are matched to the encoder's (``spagraph.embed.match``: exact, then
    case-insensitive, then ``gene_aliases`` pairs); missing genes are set to the training mean
    after standardisation ("not measured"); more than ``max_missing_weight`` of the encoder's
    weight missing raises. Returns the gene report (``uns["spagraph"]["genes"]``) or None."""
    from spagraph.embed.match import DEFAULT_MAX_MISSING_WEIGHT, check_gene_coverage
    meta = saved.meta
    if meta["d_img"] > 0 and meta.get("image_encoder") and _has_image(adata):
        from spagraph.embed import embed_slices
        embed_slices({name: adata}, fit_on=[name], image_encoder=meta["image_encoder"],
                     gene_encoder=meta["gene_encoder"], settings=dict(meta.get("embed_settings", {})),
                     cache_dir=None, progress=False)
    if meta["d_gene"] > 0:
        if saved.gene_encoder is None:
            raise ValueError(f"{saved.path}: the model uses gene embeddings but no fitted gene encoder was saved")
        enc = saved.gene_encoder
        limit = DEFAULT_MAX_MISSING_WEIGHT if max_missing_weight is None else max_missing_weight
        view, report = check_gene_coverage(adata, enc, gene_aliases, limit, slice_name=name)
        try:
            emb = enc.transform(view, fill_missing=True)
        except TypeError:              # an encoder without fill_missing (all genes present, or it raises)
            emb = enc.transform(view)
        adata.obsm["gene_emb"] = np.asarray(emb, dtype=np.float32)
        return report
    return None


def _has_image(adata) -> bool:
    from spagraph.viz.spatial import slice_image
    return slice_image(adata)[0] is not None


def slice_graph(adata, saved: SavedModel, name: str = "slice"):
    """The slice's graph with the saved graph settings, widths matched to the model."""
    from spagraph.graph import GraphSettings, build_slice_graph
    g = saved.meta["graph"]
    # the saved graph section; keys a model saved by older code lacks take GraphSettings' defaults
    data = build_slice_graph(adata, GraphSettings(**{k: g[k] for k in GraphSettings.model_fields if k in g}),
                             label_key=saved.meta.get("label_key", "cancer"), name=name)
    for key, flag, d in (("x_img", "has_img", saved.meta["d_img"]), ("x_gene", "has_gene", saved.meta["d_gene"])):
        w = data[key].shape[1]
        if w == d:
            continue
        if w == 0 or d == 0:          # modality absent on one side: masked, as in training
            data[key] = torch.zeros(data.num_nodes, d)
            data[flag] = torch.zeros(data.num_nodes, dtype=torch.bool)
        else:
            raise ValueError(f"slice {name}: {key} has {w} columns but the model expects {d}")
    return data


def _enable_dropout(model: torch.nn.Module) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def mc_dropout_scores(model, data, n_passes: int, seed: int = 0, ts=None) -> np.ndarray:
    """(n_passes, n) scores with dropout active (modality dropout off). Deterministic given ``seed``."""
    from spagraph.train.fit import slice_logits
    cpu_state = torch.get_rng_state()
    torch.manual_seed(seed)
    out = np.zeros((n_passes, data.num_nodes))
    try:
        _enable_dropout(model)
        for i in range(n_passes):
            out[i] = torch.sigmoid(slice_logits(model, data, ts)).numpy()
    finally:
        model.eval()
        torch.set_rng_state(cpu_state)
    return out


def decision_state(saved: SavedModel, threshold: float | None = None):
    """The saved calibration state (older folders without one: identity calibration, the saved
    validation cuts); ``threshold`` replaces the fixed cut."""
    from spagraph.decide.core import DecisionState
    d = saved.meta.get("decide")
    if d is None:
        d = {"calibration": {"kind": "identity"}, "val_f1": saved.val_threshold,
             "val_youden": float(saved.meta.get("youden_threshold", saved.val_threshold)),
             "fixed": float(saved.meta.get("threshold_fixed", 0.5))}
    st = DecisionState.from_dict({k: v for k, v in d.items() if k not in ("rule", "rule_choice")}, saved.val_scores)
    if threshold is not None:
        st.fixed = float(threshold)
    return st


def saved_rule(saved: SavedModel, threshold_method: str | None = None, threshold: float | None = None) -> str:
    """The rule a saved model applies: ``threshold`` given -> "fixed"; else ``threshold_method``;
    else the rule chosen for its fold when saved (``auto`` resolved by inner folds)."""
    from spagraph.decide.rules import RULES
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"--threshold must be a probability in [0, 1], got {threshold}")
        return "fixed"
    rule = threshold_method or (saved.meta.get("decide") or {}).get("rule") or saved.meta.get("threshold_method", "quantile_beta")
    if rule == "auto":
        rule = "prior_adjusted"
    if rule not in RULES:
        raise ValueError(f"threshold method must be one of {RULES}, got {rule!r}")
    return rule


def predict_slice(models: list[SavedModel] | SavedModel, adata, name: str = "slice", n_mc: int = 20,
                  mc_seed: int = 0, distance_pitches: float | None = 1.0, k_hops: int | None = None,
                  max_spread: float | None = None, embed: bool = True, device: str = "cpu",
                  threshold_method: str | None = None, threshold: float | None = None,
                  risk_level: float = 0.25, gene_aliases=None, max_missing_weight: float | None = None) -> dict:
    """Score, threshold, regions and risk of one slice; written into ``adata`` (see conventions).

    Score = each member's eval-mode score through its saved calibration (validation slices only),
    averaged over members. Calls = :func:`spagraph.decide.core.decide_rules` per member with the
    rule saved for its fold (``threshold_method`` overrides it; ``threshold`` gives a fixed cut on
    the calibrated scale), majority over members; the reported threshold is the members' mean.
    Spreads: ``spagraph_seed_std`` across members, ``spagraph_mc_std`` across ``n_mc`` MC-dropout
    passes (mean over members); ``spagraph_uncertainty`` = their root sum of squares. High-risk:
    :func:`spagraph.regions.risk_table` (label-free). Tumour regions: connected components
    (:func:`spagraph.regions.tumour_regions`). Returns a dict with the per-spot ``table``.
    """
    import pandas as pd
    from spagraph.regions import assign_regions, risk_table
    from spagraph.train.fit import predict_scores
    from spagraph.experiment.runner import train_settings
    models = [models] if isinstance(models, SavedModel) else list(models)
    if not models:
        raise ValueError("predict_slice needs at least one saved model")
    if n_mc < 0:
        raise ValueError(f"n_mc must be >= 0, got {n_mc}")
    from spagraph.decide.core import decide_rules
    from spagraph.regions import tumour_regions
    probs, mc_stds, thrs, methods, preds, prevs, flags = [], [], [], [], [], [], []
    g = None
    gene_report = None
    for i, m in enumerate(models):
        if embed:
            gene_report = embed_for_prediction(adata, m, name, gene_aliases, max_missing_weight) or gene_report
        g = slice_graph(adata, m, name)
        ts = train_settings(m.cfg)
        s = predict_scores(m.model, g, ts)
        if ts.self_train_rounds > 0:   # label-free refinement of the slice's ranking (spagraph/train/selftrain.py)
            from spagraph.train.adapt import strip_labels
            from spagraph.train.selftrain import self_train_scores
            s = self_train_scores(m.model, strip_labels(g), ts, int(m.meta.get("seed") or 0))
        state = decision_state(m, threshold)
        rule = saved_rule(m, threshold_method, threshold)
        sd = decide_rules(s, state, [rule], g.edge_index_0.numpy())
        d = sd.rules[rule]
        probs.append(sd.prob); thrs.append(d.threshold); methods.append(d.used); preds.append(d.pred)
        prevs.append(sd.prevalence); flags.extend(d.flags)
        if n_mc > 0:
            mc = state.calibration(mc_dropout_scores(m.model, g, n_mc, seed=mc_seed + i, ts=ts))
            mc_stds.append(mc.std(0))
    score = np.mean(probs, axis=0)
    seed_std = np.std(probs, axis=0) if len(probs) > 1 else np.zeros(len(score))
    mc_std = np.mean(mc_stds, axis=0) if mc_stds else np.zeros(len(score))
    unc = np.sqrt(seed_std ** 2 + mc_std ** 2)
    thr = float(np.mean(thrs))
    pred = (np.mean(preds, axis=0) >= 0.5).astype(int)      # members' calls, majority (one member: its calls)
    label_key = models[0].meta.get("label_key", "cancer")
    label = None
    if label_key in adata.obs and adata.obs[label_key].notna().any():
        label = adata.obs[label_key].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
    rt = risk_table(adata, score, thr, label=label, pred=pred, slice_name=name, spread=unc,
                    risk_level=risk_level, max_spread=max_spread)
    regions = assign_regions(adata, pred=pred, distance_pitches=distance_pitches, k_hops=k_hops,
                             high_risk=rt["high_risk"].to_numpy())
    rid, rtab = tumour_regions(g if g is not None else adata, pred, score)
    adata.obs["spagraph_score"] = score.astype(np.float64)
    adata.obs["spagraph_pred"] = pred.astype(np.int8)
    from spagraph.viz.spatial import REGION_COLOURS
    reg = pd.Categorical(regions, categories=list(regions.categories)).remove_unused_categories()
    adata.obs["spagraph_region"] = reg
    # scanpy reads <key>_colors in category order: sc.pl.spatial(color="spagraph_region") uses ours
    adata.uns["spagraph_region_colors"] = [REGION_COLOURS[c] for c in reg.categories]
    adata.obs["spagraph_tumour_region"] = rid.astype(np.int32)
    adata.obs["spagraph_risk"] = rt["risk"].to_numpy(dtype=np.float64)
    adata.obs["spagraph_uncertainty"] = unc.astype(np.float64)
    adata.obs["spagraph_seed_std"] = seed_std.astype(np.float64)
    adata.obs["spagraph_mc_std"] = mc_std.astype(np.float64)
    method = methods[0] if len(set(methods)) == 1 else "mixed:" + ",".join(sorted(set(methods)))
    adata.uns["spagraph"] = {
        "model": [str(m.path.resolve()) for m in models], "config_hash": models[0].config_hash,
        "threshold": thr, "threshold_method": method, "member_thresholds": [float(t) for t in thrs],
        "rule": saved_rule(models[0], threshold_method, threshold),
        "prevalence_estimate": (float(np.mean([p for p in prevs if p is not None])) if any(p is not None for p in prevs)
                                else float("nan")),
        "predicted_fraction": float(pred.mean()) if len(pred) else float("nan"),
        "flags": "; ".join(sorted(set(flags))),              # h5ad-friendly: one string ("" = none)
        "calibration": json.dumps([m.meta.get("decide", {}).get("calibration", {"kind": "identity"}) for m in models]),
        "n_models": len(models), "mc_dropout_passes": int(n_mc),
        "score": "calibrated P(cancer), mean over ensemble members",
        "uncertainty": "sqrt(spagraph_seed_std^2 + spagraph_mc_std^2)",
        "seed_std": "std of the calibrated probability across ensemble members (0 with one)",
        "mc_std": "std across MC-dropout passes, mean over members (0 with --mc-passes 0)",
        "tumour_regions": {c: rtab[c].to_numpy(dtype=float if c == "mean_probability" else np.int64)
                           for c in rtab.columns},
        "regions": {"boundary": (f"within {k_hops} hop(s) on the scale-1 graph" if k_hops is not None
                                 else f"within {distance_pitches:g} pitch(es)"),
                    "risk_level": float(risk_level), "max_spread": float("nan") if max_spread is None else float(max_spread),
                    "high_risk": "predicted non-cancer with P >= risk_level or P + 2 std >= risk_level"},
    }
    if gene_report is not None:
        adata.uns["spagraph"]["genes"] = gene_report
    table = pd.DataFrame({"spot": list(map(str, adata.obs_names)), "score": score, "pred": pred,
                          "region": regions, "risk": rt["risk"].to_numpy(), "uncertainty": unc,
                          "seed_std": seed_std, "mc_std": mc_std, "tumour_region": rid,
                          "high_risk": rt["high_risk"].to_numpy(), "risk_rank": rt["risk_rank"].to_numpy(),
                          "nearest_tumour_distance": rt["nearest_tumour_distance"].to_numpy()})
    return {"table": table, "threshold": thr, "threshold_method": method, "adata": adata, "genes": gene_report}


def write_prediction(adata, table, out: str | Path) -> tuple[Path, Path]:
    """Save the annotated slice (.h5ad) and the per-spot CSV next to it, both atomically."""
    out = Path(out)
    if out.suffix != ".h5ad":
        raise ValueError(f"--out must end in .h5ad, got {out}")
    write_h5ad(adata, out)        # in memory first: a full disk is one clear error, not h5py noise
    csv = out.with_suffix(".csv")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return out, csv
