"""Label schemas: free-text annotations -> original class and binary cancer (1 / 0 / NA)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def _norm(s: str) -> str:
    return " ".join(str(s).strip().lower().replace("_", " ").split())


@dataclass
class LabelSchema:
    """Maps annotation text to classes.

    cancer : annotations counted as cancer (1). undetermined : annotations mapped to NA.
    non_cancer : annotations counted as non-cancer (0); ``None`` = every other known label.
    unknown : what to do with a label in none of the lists: ``"error"``, ``"na"`` or ``"non_cancer"``.
    Matching is case- and whitespace-insensitive.
    """
    cancer: list[str] = field(default_factory=lambda: ["invasive cancer", "cancer in situ"])
    undetermined: list[str] = field(default_factory=lambda: ["undetermined"])
    non_cancer: list[str] | None = field(default_factory=lambda: ["connective tissue", "adipose tissue",
                                                                   "breast glands", "immune infiltrate"])
    unknown: str = "error"

    @classmethod
    def from_dict(cls, d: dict | None) -> "LabelSchema":
        if not d:
            return cls()
        allowed = {"cancer", "undetermined", "non_cancer", "unknown"}
        bad = set(d) - allowed
        if bad:
            raise ValueError(f"label mapping: unknown keys {sorted(bad)}; allowed {sorted(allowed)}")
        unknown = d.get("unknown", "error")
        if unknown not in ("error", "na", "non_cancer"):
            raise ValueError(f"label mapping: unknown: {unknown!r} must be one of 'error', 'na', 'non_cancer'")
        for k in ("cancer", "undetermined", "non_cancer"):
            v = d.get(k)
            if v is not None and (isinstance(v, str) or not all(isinstance(x, str) for x in v)):
                raise ValueError(f"label mapping: {k} must be a list of label texts, got {v!r}")
        both = {_norm(x) for x in d.get("cancer") or []} & {_norm(x) for x in (d.get("non_cancer") or [])}
        if both:
            raise ValueError(f"label mapping: {sorted(both)} listed as both cancer and non_cancer")
        return cls(**d)

    def apply(self, annotation: pd.Series, source: str = "") -> tuple[pd.Series, pd.Series]:
        """Return (label_class categorical, cancer Int8 with NA) for an annotation Series."""
        canc = {_norm(x) for x in self.cancer}
        und = {_norm(x) for x in self.undetermined}
        non = None if self.non_cancer is None else {_norm(x) for x in self.non_cancer}
        norm = annotation.map(lambda v: _norm(v) if isinstance(v, str) else np.nan)
        out = pd.Series(pd.NA, index=annotation.index, dtype="Int8")
        out[norm.isin(canc)] = 1
        if non is None:
            zero = norm.notna() & ~norm.isin(canc) & ~norm.isin(und)
        else:
            zero = norm.isin(non)
        out[zero] = 0
        unknown = norm.notna() & ~norm.isin(canc) & ~norm.isin(und) & ~zero
        if unknown.any():
            labs = sorted(set(annotation[unknown]))
            if self.unknown == "error":
                raise ValueError(f"{source}: {int(unknown.sum())} spot(s) carry labels the label schema does not know: "
                                 f"{labs}; add them to the dataset card's label_mapping (or set unknown: na)")
            warnings.warn(f"{source}: labels {labs} not in the schema, mapped to "
                          f"{'NA' if self.unknown == 'na' else 'non-cancer'}")
            if self.unknown == "non_cancer":
                out[unknown] = 0
        return pd.Categorical(norm), out


HER2ST = LabelSchema()
