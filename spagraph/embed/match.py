"""Match a new slice's genes to a saved model's genes, and say how much of the model is missing.

A slice from another batch or platform rarely carries exactly the training genes: legacy ST
files omit genes with no counts, Visium references rename symbols, panels differ. Matching, in
order, for each gene the model reads:

1. exact symbol;
2. case-insensitive symbol (``c2orf54`` = ``C2orf54``), only when unambiguous in the slice;
3. an optional alias table (CSV with two columns, e.g. ``alias,symbol``: each row says the two
   names are one gene; matched in either direction, case-insensitively).

Genes still missing are *filled by the encoder* with the value that means "not measured" in its
normalised space: 0 after standardisation, i.e. the training mean of that gene (for ``pca`` the
exact training mean of the standardised gene, so the gene adds nothing to any component). Zero
*counts* would be wrong: after log1p and scaling, 0 counts read as strong under-expression and
push every spot the same way. With per-slice z-scoring (``slice_norm: zscore``) 0 is also what
any gene's slice average maps to, so a missing gene looks like a gene at its average everywhere.

How much this costs is measured by the missing genes' share of the encoder's weight
(``encoder.gene_weights()``): for ``pca``, the sum of the missing genes' squared loadings over
the kept components divided by the total (n_pcs); for ``hvg`` and the sentence encoders, their
share of the input genes. Above ``max_missing_weight`` prediction is refused.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

DEFAULT_MAX_MISSING_WEIGHT = 0.2


def read_aliases(path: str | Path) -> list[tuple[str, str]]:
    """Pairs of names for one gene from a CSV (first two columns; a header row is skipped when its
    first cell is ``alias``, ``symbol``, ``gene`` or ``from``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene alias table not found: {path}")
    pairs = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{i + 1}: expected two gene names (alias,symbol), got {row}")
            if i == 0 and row[0].strip().lower() in ("alias", "symbol", "gene", "from"):
                continue
            pairs.append((row[0].strip(), row[1].strip()))
    return pairs


def match_genes(slice_genes, model_genes, aliases: list[tuple[str, str]] | None = None) -> dict:
    """Map each of ``model_genes`` to a name in ``slice_genes`` (or to nothing).

    Returns ``{"map": {model gene: slice gene}, "exact": n, "case": n, "alias": n,
    "missing": [model genes not found]}``.
    """
    slice_genes = [str(g) for g in slice_genes]
    have = set(slice_genes)
    lower: dict[str, list[str]] = {}
    for g in slice_genes:
        lower.setdefault(g.lower(), []).append(g)
    links: dict[str, set[str]] = {}
    for a, b in aliases or []:
        links.setdefault(a.lower(), set()).add(b.lower())
        links.setdefault(b.lower(), set()).add(a.lower())
    out, n = {}, {"exact": 0, "case": 0, "alias": 0}
    used: set[str] = set()
    missing = []
    # exact matches first, so a case-insensitive or alias match never steals an exact one
    for g in model_genes:
        if g in have:
            out[g] = g
            used.add(g)
            n["exact"] += 1
    for g in model_genes:
        if g in out:
            continue
        cands = [c for c in lower.get(g.lower(), []) if c not in used]
        kind = "case"
        if len(cands) != 1:
            cands = sorted({c for a in links.get(g.lower(), ()) for c in lower.get(a, []) if c not in used})
            kind = "alias"
        if len(cands) == 1:
            out[g] = cands[0]
            used.add(cands[0])
            n[kind] += 1
        else:
            missing.append(g)
    return {"map": out, **n, "missing": missing}


def renamed_view(adata, mapping: dict[str, str]):
    """A light AnnData holding the matched genes under the model's names (X columns, obs,
    obsm and uns shared with ``adata``; nothing copied but the selected columns)."""
    import anndata as ad
    import pandas as pd
    model_names = list(mapping)
    idx = adata.var_names.get_indexer([mapping[g] for g in model_names])
    X = adata.X[:, idx] if len(idx) else adata.X[:, :0]
    b = ad.AnnData(X, obs=adata.obs[[]].copy(), var=pd.DataFrame(index=pd.Index(model_names, dtype=str)))
    b.obsm["spatial"] = np.asarray(adata.obsm["spatial"]) if "spatial" in adata.obsm else None
    return b


def check_gene_coverage(adata, encoder, aliases=None, max_missing_weight: float = DEFAULT_MAX_MISSING_WEIGHT,
                        slice_name: str = "slice"):
    """Match ``adata``'s genes to ``encoder``'s; return (AnnData for the encoder, report dict).

    The report (written to ``uns["spagraph"]["genes"]`` by predict) has ``n_model_genes``,
    ``n_exact``, ``n_case_insensitive``, ``n_alias``, ``n_missing``, ``missing_weight_share``
    (missing genes' share of the encoder weight, 0-1), ``missing_examples`` (largest weight first),
    ``n_library_genes_missing`` and ``fill`` (what missing genes were set to).
    Raises ValueError when the share exceeds ``max_missing_weight``.
    """
    genes = list(getattr(encoder, "genes", []) or [])
    lib = list(getattr(encoder, "lib_genes", None) or [])
    wanted = genes + [g for g in lib if g not in set(genes)]
    m = match_genes(adata.var_names, wanted, aliases)
    weights = encoder.gene_weights() if hasattr(encoder, "gene_weights") else {g: 1.0 for g in genes}
    total = float(sum(weights.values())) or 1.0
    gset = set(genes)
    miss = [g for g in m["missing"] if g in gset]
    share = float(sum(weights.get(g, 0.0) for g in miss)) / total
    examples = sorted(miss, key=lambda g: -weights.get(g, 0.0))[:10]
    report = {"n_model_genes": len(genes), "n_exact": sum(1 for g in genes if m["map"].get(g) == g),
              "n_case_insensitive": 0, "n_alias": 0, "n_missing": len(miss),
              "missing_weight_share": round(share, 6), "max_missing_weight": float(max_missing_weight),
              "missing_examples": examples,
              "n_library_genes_missing": sum(1 for g in m["missing"] if g not in gset),
              "fill": "0 after standardisation (the training mean of the gene): 'not measured'"}
    for g in genes:
        src = m["map"].get(g)
        if src is None or src == g:
            continue
        if src.lower() == g.lower():
            report["n_case_insensitive"] += 1
        else:
            report["n_alias"] += 1
    if share > max_missing_weight:
        raise ValueError(
            f"slice {slice_name}: {len(miss)} of the model's {len(genes)} genes are missing, carrying "
            f"{share:.1%} of the gene encoder's weight (limit {max_missing_weight:.0%}; --max-missing-weight); "
            f"e.g. {', '.join(examples[:8])}. Give an alias table (--gene-aliases alias,symbol CSV) if the "
            "slice names these genes differently, or train on genes this platform measures.")
    if all(src == g for g, src in m["map"].items()):     # nothing renamed: the encoder fills the rest
        return adata, report
    return renamed_view(adata, m["map"]), report
