"""Experiment YAML schema, validated once at load (pydantic).

A YAML may ``extends:`` another (path relative to itself) and override any key; the command
line overrides with ``--set a.b=value``. Unknown keys and wrong types are errors naming the
key and the file:line it came from.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from spagraph.utils import load_yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with the file and line when known."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Keys that once existed and were removed because nothing used them: accepted (and dropped) at
# their old no-op value, so configs and saved models written before still load, refused otherwise.
RETIRED = {"train": {"val_smoothing": 1, "focal_gamma": 0.0}, "model": {"feature_smoothing_steps": 1}}
# Keys added later: left out of the config hash while at their default, so runs and saved models
# from before they existed keep their hash (resume, suite reuse and load_model checks).
ADDED_LATER = {"train": {"orient_augment": False, "prior_rule_se": "hanley_mcneil", "tiles_per_step": 0,
                         "coral_weight": 0.0, "mmd_weight": 0.0, "adversarial_weight": 0.0,
                         "adversarial_lr_scale": 1.0, "align_ramp": False, "self_train_rounds": 0,
                         "self_train_epochs": 100, "self_train_lr": 1e-3, "self_train_confidence": 0.9,
                         "self_train_consistency": 1.0, "self_train_blend": 0.5},
               "model": {"hidden_norm": "layer", "msfa_input": "hidden", "token_norm": False}}


def _drop_retired(section: str, data):
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, old in RETIRED[section].items():
        if key in out:
            if out[key] != old:
                raise ValueError(f"{section}.{key} was removed (it was never used by an experiment); "
                                 f"only its old no-op value {old!r} is still accepted, got {out[key]!r}")
            out.pop(key)
    return out


class SliceSource(_Strict):
    """One source of slices.

    reader: ``her2st`` (root + names), ``spaceranger`` (path = outs/, optional annotation CSV),
    ``h5ad`` (path), ``card`` (a dataset card from ``datasets/`` + the root it was fetched to), ``synthetic`` (generated: n_slices x n_spots, seed, optional batch effect),
    ``xenium`` (path = Xenium output folder; ``bin_um`` + ``bins`` square / hex / cells, optional ``he_image`` +
    ``he_alignment``), ``visium_hd`` (path = Space Ranger outs/; ``bin_um`` 2 / 8 / 16),
    ``spatialdata`` (path = .zarr; optional ``table``, ``region``, ``annotation_key``).
    ``annotation`` (CSV id,label) works for spaceranger, xenium (cell or pseudo-spot ids) and visium_hd.
    ``group`` tags slices for the transfer protocol (source / target).
    """
    reader: Literal["her2st", "spaceranger", "h5ad", "synthetic", "card", "xenium", "visium_hd", "spatialdata"]
    card: Optional[str] = None             # reader 'card': dataset card name (datasets/<card>.yaml) or path
    root: Optional[str] = None
    names: Optional[list[str]] = None
    path: Optional[str] = None
    name: Optional[str] = None
    annotation: Optional[str] = None
    n_slices: int = Field(4, ge=1)
    n_spots: int = Field(600, ge=2)
    seed: int = 0
    grid: Literal["hex", "square"] = "hex"
    with_image: bool = True
    batch_effect: Optional[dict[str, float]] = None
    group: str = "default"
    bin_um: Optional[float] = Field(None, gt=0)        # xenium (default 50) / visium_hd (default 16)
    bins: Literal["square", "hex", "cells"] = "square"  # xenium pseudo-spot grid
    he_image: Optional[str] = None                      # xenium: post-Xenium H&E ...
    he_alignment: Optional[str] = None                  # ... and its 3x3 alignment CSV
    table: Optional[str] = None                         # spatialdata: table name
    region: Optional[str] = None                        # spatialdata: annotated shapes / points
    annotation_key: Optional[str] = None                # spatialdata: obs column with label text

    @model_validator(mode="after")
    def _needs(self):
        if self.reader == "her2st" and (not self.root or not self.names):
            raise ValueError("reader 'her2st' needs 'root' (directory) and 'names' (list of slice names)")
        if self.reader == "card" and (not self.card or not self.root):
            raise ValueError("reader 'card' needs 'card' (dataset card name) and 'root' (where `spagraph fetch` put it)")
        if (self.he_image is None) != (self.he_alignment is None):
            raise ValueError("he_image and he_alignment go together (the H&E and its 3x3 alignment CSV)")
        if self.reader in ("spaceranger", "h5ad", "xenium", "visium_hd", "spatialdata") and not self.path:
            raise ValueError(f"reader '{self.reader}' needs 'path'")
        return self


class DataConfig(_Strict):
    sources: list[SliceSource] = Field(min_length=1)
    label_key: str = "cancer"
    train: Optional[list[str]] = None      # protocol 'fixed'
    validate_: Optional[list[str]] = Field(None, alias="validate")
    test: Optional[list[str]] = None
    source_group: Optional[str] = None     # protocol 'transfer'
    target_group: Optional[str] = None
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


IMAGE_ENCODERS = ("handcrafted", "uni2h", "timm:<model name>")
GENE_ENCODERS = ("hvg", "pca", "sentence", "omiclip")


class EmbedConfig(_Strict):
    image_encoder: Optional[str] = "handcrafted"
    gene_encoder: str = "pca"
    settings: dict[str, Any] = Field(default_factory=dict)
    cache_dir: Optional[str] = None

    @field_validator("image_encoder")
    @classmethod
    def _known_image(cls, v):
        if v is None:
            return v
        if v in ("handcrafted", "uni2h") or (v.startswith("timm:") and v[5:].strip()):
            return v
        raise ValueError(f"unknown image encoder {v!r}; known: {', '.join(IMAGE_ENCODERS)} (or null: no image)")

    @field_validator("gene_encoder")
    @classmethod
    def _known_gene(cls, v):
        if v not in GENE_ENCODERS:
            raise ValueError(f"unknown gene encoder {v!r}; known: {', '.join(GENE_ENCODERS)}")
        return v


class GraphConfig(_Strict):
    scales: list[float] = Field(default_factory=lambda: [1.0, 2.0, 3.0])
    n_dir_bins: int = Field(8, ge=1, le=64)
    shells: bool = False
    feature_knn: int = Field(0, ge=0)          # > 0: expression-neighbour edges (edge_index_feat)
    feature_knn_on: Literal["gene", "img"] = "gene"

    @field_validator("scales")
    @classmethod
    def _pos(cls, v):
        if not v or any(s <= 0 for s in v):
            raise ValueError("scales must be a non-empty list of positive numbers (spot pitches)")
        return sorted(v)


class ModelConfig(_Strict):
    hidden: int = Field(64, ge=4)
    heads: int = Field(4, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    input_dropout: float = Field(0.1, ge=0, lt=1)
    n_modes: int = Field(2, ge=1)
    msfa: bool = True
    cross_attention: bool = True
    contrastive_weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.1, gt=0)
    modality_dropout: float = Field(0.2, ge=0, le=1)
    linear_path: bool = False
    linear_fit: Literal["prior", "joint"] = "prior"
    linear_C: float = Field(0.01, gt=0)
    feature_smoothing: float = Field(0.0, ge=0, lt=1)   # alpha of score smoothing over edge_index_feat
    # normalisation after each stream's input projection: "layer" (per spot) or "slice" (each hidden unit
    # standardised over the spots of the slice being processed, training and test slices alike: AdaBN-style,
    # label-free; spagraph/train/adapt.py)
    hidden_norm: Literal["layer", "slice", "none"] = "layer"
    # what each MSFA scale aggregates: "hidden" (the stream's projected, normalised, GELU-activated spots) or
    # "input" (the modality's input embeddings, so a scale token is a linear map of its neighbourhood's input
    # means); token_norm: LayerNorm on each MSFA scale token (the self token has hidden_norm). Both for tokens
    # whose content differs by scale (benchmarks/README.md, "Synthetic task only a graph network can solve")
    msfa_input: Literal["hidden", "input"] = "hidden"
    token_norm: bool = False

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data):
        return _drop_retired("model", data)

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    patience: int = Field(15, ge=1)
    min_epochs: int = Field(5, ge=1)
    class_weight: bool = True
    batch_mode: Literal["auto", "full", "tiles"] = "auto"
    max_full_nodes: int = Field(50_000, ge=1)
    tile_size: float = Field(40.0, gt=0)
    device: str = "auto"
    ema_decay: float = Field(0.0, ge=0, lt=1)
    one_se_rule: bool = True
    prior_rule_se: Literal["hanley_mcneil", "delong"] = "hanley_mcneil"   # the standard error the one-SE rule uses
    orient_augment: bool = False   # random cyclic shift + reflection of the direction bins per slice and step
    # > 0: training steps are mini-batches of this many spatial tiles (tile_size pitches, with halo) drawn
    # from all training slices together, every training spot once per epoch (spagraph/train/minibatch.py)
    tiles_per_step: int = Field(0, ge=0)
    # > 0: deep-CORAL term aligning the fused hidden features of the test slice (labels stripped) with the
    # training spots' (spagraph/train/adapt.py)
    coral_weight: float = Field(0.0, ge=0)
    # > 0: squared MMD (Gaussian kernel, median-heuristic bandwidth) between those same features
    mmd_weight: float = Field(0.0, ge=0)
    # > 0: a slice discriminator on those features behind a gradient-reversal layer (DANN, Ganin-Lempitsky
    # ramp-up of the reversal over train.epochs); the model learns to make the slices indistinguishable
    adversarial_weight: float = Field(0.0, ge=0)
    adversarial_lr_scale: float = Field(1.0, gt=0)   # the discriminator's learning rate / train.lr
    align_ramp: bool = False   # CORAL and MMD weights follow the same ramp as the reversal (0 in epoch 0)
    # >= 1: transductive self-training on each test slice (labels stripped) after the fit: rounds of
    # pseudo-labels from the scores + a graph network fitted on that slice alone with a graph-
    # consistency term (spagraph/train/selftrain.py, where the defaults below are argued); 0 = off
    self_train_rounds: int = Field(0, ge=0)
    self_train_epochs: int = Field(100, ge=1)          # full-slice steps per round
    self_train_lr: float = Field(1e-3, gt=0)
    self_train_confidence: float = Field(0.9, gt=0.5, lt=1)   # pseudo-label: neighbour-averaged mixture posterior
    self_train_consistency: float = Field(1.0, ge=0)   # weight of the neighbour-agreement term
    self_train_blend: float = Field(0.5, ge=0, le=1)   # weight of the slice's own fit in the new ranking
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("train.seeds is empty: list at least one seed, e.g. seeds: [0] (one model per seed)")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"train.seeds lists seed(s) {dup} more than once; each seed is one run")
        return v

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data):
        return _drop_retired("train", data)


class ProtocolConfig(_Strict):
    """``loso`` / ``transfer`` / ``fixed`` evaluate on test slices; ``fit`` trains a model for
    deployment on every listed slice except the last ``n_val`` (whole held-out validation slices
    for early stopping and the threshold rule) and has no test slice."""
    kind: Literal["loso", "transfer", "fixed", "fit"] = "loso"
    n_val: int = Field(1, ge=1)   # whole slices held out of training for validation


class ThresholdConfig(_Strict):
    # "auto": chosen per fold by inner leave-one-slice-out over the fold's training slices
    # (spagraph.decide.choose); every rule acts on calibrated probabilities (spagraph.decide)
    method: Literal["auto", "prior_adjusted", "expected_f1", "spatial", "mixture_spatial", "prevalence_quantile", "quantile_beta", "quantile_empirical",
                    "mixture", "val_f1", "val_youden", "fixed"] = "auto"
    fixed: float = Field(0.5, ge=0, le=1)
    # "relative": slice-relative Platt fitted on the validation slice and the training slices'
    # cross-fitted inner scores (spagraph.decide.calibration); "relative_within": the same, with
    # each slice's log-odds scaled by the spread within its two mixture components
    calibration: Literal["platt", "relative", "relative_within", "isotonic", "identity"] = "platt"
    # the slice's estimated cancer fraction: EM prior adjustment, two-component mixture, or the one
    # with the lower inner-fold error ("auto")
    prevalence: Literal["auto", "em", "mixture"] = "auto"


class TrackConfig(_Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "spagraph"
    group: Optional[str] = None
    dir: Optional[str] = None


class SearchParam(_Strict):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None


class NestedConfig(_Strict):
    """Nested leave-one-slice-out selection (``nested:``): for each outer test slice, every choice
    below is made by an inner leave-one-slice-out over that fold's training slices only.

    grid : dotted config keys -> candidate values (all combinations), scored by the cheap scorer:
        the linear prior alone (fitted on the inner training slices, AUC on the inner test slice).
    choose_deep : then, at the chosen grid point, the full model (inner validation = the next
        inner slice, as outer) against the prior alone by mean inner test AUC; the outer fold runs
        the winner.
    inner_seed : seed of the inner deep fits.
    """
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    choose_deep: bool = True
    inner_seed: int = 0


class PretrainConfig(_Strict):
    """Self-supervised pretraining of the gene stream's MSFA encoder (``pretrain:``) on an
    unannotated pool of sections (:mod:`spagraph.pretrain`), once per outer fold, before the
    supervised fit starts from those weights. Off by default (today's behaviour).

    pool : her2st-format root of the unannotated sections (``counts/<S>.tsv.gz`` + ``spots/``).
    names : pool sections to use (default: every section in ``pool/counts``). Either way no
        section of a test slice's patient is ever used (:func:`spagraph.pretrain.pool.allowed_sections`);
        an explicit list naming one is refused.
    patient_pattern : regular expression whose first group is a section's patient
        (her2st: the letter, ``A1`` and ``A2`` are patient ``A``).
    objective : ``masked`` (reconstruct masked spots' gene embeddings from their MSFA
        neighbourhood), ``contrastive`` (InfoNCE between two augmented views of the slice graph)
        or ``both``.
    epochs, lr, weight_decay, mask_rate, seed : the pretraining run (one step per pool section
        per epoch; ``seed`` is fixed, so every training seed of a fold shares one pretraining).
    cache_dir : folder of pretrained weights keyed by content (pool sections, their features,
        model and pretrain settings); None keeps them in memory for this process only.
    """
    enabled: bool = False
    pool: str = "../shared/data/her2st_unlabelled"
    names: Optional[list[str]] = None
    patient_pattern: str = r"^([A-Za-z]+)"
    objective: Literal["masked", "contrastive", "both"] = "masked"
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    mask_rate: float = Field(0.3, gt=0, lt=1)
    seed: int = 0
    cache_dir: Optional[str] = None


class ExperimentConfig(_Strict):
    name: str = "experiment"
    model_type: Literal["spagraph", "baseline"] = "spagraph"
    baseline: Optional[dict[str, Any]] = None
    data: DataConfig
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    out: Optional[str] = None
    search: dict[str, SearchParam] = Field(default_factory=dict)
    nested: Optional[NestedConfig] = None
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    @model_validator(mode="after")
    def _pretrain_where(self):
        if self.pretrain.enabled:
            if self.model_type != "spagraph" or not self.embed.gene_encoder:
                raise ValueError("pretrain.enabled pretrains spagraph's gene stream: it needs model_type "
                                 "'spagraph' and a gene encoder")
            if self.nested is not None:
                raise ValueError("pretrain.enabled is not supported with nested: (inner folds would need "
                                 "their own pretraining); run it with the plain protocol")
        return self

    @model_validator(mode="after")
    def _self_train_where(self):
        if self.train.self_train_rounds > 0 and self.model_type != "spagraph":
            raise ValueError("train.self_train_rounds self-trains spagraph's graph network on each test slice: it needs "
                             f"model_type 'spagraph', got {self.model_type!r}")
        return self

    @model_validator(mode="after")
    def _smoothing_needs_edges(self):
        if self.model_type == "spagraph" and self.model.feature_smoothing > 0 and self.graph.feature_knn == 0:
            raise ValueError(f"model.feature_smoothing = {self.model.feature_smoothing} smooths scores over the "
                             "expression-neighbour graph, but graph.feature_knn is 0 (no such edges); set "
                             "graph.feature_knn (e.g. 10) or model.feature_smoothing: 0")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    def config_hash(self) -> str:
        d = self.to_dict()
        d.pop("out", None); d.pop("track", None); d.pop("search", None)
        if d.get("nested") is None:
            d.pop("nested", None)   # added later: configs without it keep their hash
        if isinstance(d.get("pretrain"), dict):
            d["pretrain"].pop("cache_dir", None)   # where weights are cached changes no result
            if d["pretrain"] == {k: v for k, v in PretrainConfig().model_dump(mode="json").items() if k != "cache_dir"}:
                d.pop("pretrain")                  # added later: off by default, old hashes unchanged
        for section, keys in RETIRED.items():      # hashes as before those keys were removed ...
            d[section] = {**d[section], **keys}
        for section, keys in ADDED_LATER.items():  # ... and before these were added (at their default)
            for k, v in keys.items():
                if d[section].get(k) == v:
                    d[section].pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading with line numbers

def _compose(path: Path) -> tuple[Any, dict[tuple, str]]:
    """Parse YAML, returning the data and a map key-path -> 'file:line'."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; expected an experiment YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the experiment file: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = load_yaml(text, path)          # refuses duplicate keys, naming both lines
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    lines: dict[tuple, str] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = prefix + (k.value,)
                lines[key] = f"{path}:{k.start_mark.line + 1}"
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                key = prefix + (i,)
                lines[key] = f"{path}:{v.start_mark.line + 1}"
                walk(v, key)
    if node is not None:
        walk(node, ())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train, ...)")
    return data, lines


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_raw(path: Path, seen: tuple = ()) -> tuple[dict, dict]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle: {' -> '.join(map(str, seen + (path,)))}")
    data, lines = _compose(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, lines
    if not isinstance(parent, str):
        raise ConfigError(f"{lines.get(('extends',), path)}: 'extends' must be a path to another YAML")
    ppath = (path.parent / parent)
    if not ppath.is_file():
        raise ConfigError(f"{lines.get(('extends',), path)}: 'extends: {parent}' names a missing file "
                          f"({ppath.resolve()})")
    base, blines = _load_raw(ppath, seen + (path,))
    blines.update(lines)
    return _merge(base, data), blines


def parse_set(assignments: list[str] | None) -> list[tuple[list[str], Any]]:
    """Parse ``--set a.b=value`` strings (values parsed as YAML scalars/lists)."""
    out = []
    for a in assignments or []:
        if "=" not in a:
            raise ConfigError(f"--set {a!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
        k, v = a.split("=", 1)
        keys = [p for p in k.strip().split(".") if p]
        if not keys:
            raise ConfigError(f"--set {a!r}: empty key")
        try:
            val = load_yaml(v, f"--set {a}")
        except (yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"--set {a!r}: value is not valid YAML: {e}") from None
        out.append((keys, val))
    return out


def _apply_set(data: dict, sets, lines) -> dict:
    for keys, val in sets:
        d = data
        for k in keys[:-1]:
            if k not in d or not isinstance(d[k], dict):
                d[k] = {} if k not in d else d[k]
                if not isinstance(d[k], dict):
                    raise ConfigError(f"--set {'.'.join(keys)}: '{k}' is not a section")
            d = d[k]
        d[keys[-1]] = val
        lines[tuple(keys)] = f"--set {'.'.join(keys)}"
    return data


def _describe(err: ValidationError, lines: dict) -> str:
    msgs = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = None
        for i in range(len(loc), 0, -1):
            if loc[:i] in lines:
                where = lines[loc[:i]]
                break
        key = ".".join(map(str, loc)) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{key}'"
        else:
            msg = f"'{key}': {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e.get("input"), dict) else "")
        msgs.append(f"{where}: {msg}" if where else msg)
    return "invalid experiment config:\n  " + "\n  ".join(msgs)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, merge (``extends``), override (``--set``) and validate an experiment YAML."""
    data, lines = _load_raw(Path(path))
    data = _apply_set(data, parse_set(overrides), lines)
    return validate_config(data, lines)


def validate_config(data: dict, lines: dict | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, lines or {})) from None


def dump_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from spagraph.utils import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
