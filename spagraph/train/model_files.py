"""Reading the files of a saved model folder with errors that name the file.

Saved weights are loaded with ``torch.load(weights_only=True)`` only: a file holding pickled
Python objects is refused, and torch's own advice to retry with ``weights_only=False`` (which
would run arbitrary code from an untrusted file) is never passed on.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from spagraph.utils import read_json

META_KEYS = ("config_hash", "d_img", "d_gene", "n_scales", "n_bins", "model_settings", "graph", "val_threshold")


def _reason(e: BaseException) -> str:
    """torch.load's failure in one sentence, without its suggestion to disable weights_only."""
    msg = str(e)
    if "WeightsUnpickler error:" in msg:
        detail = msg.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
        return f"it holds pickled Python objects, which are not loaded ({detail.split(' was not')[0]})"
    if isinstance(e, EOFError) or not msg:
        return "the file is empty or truncated"
    if "central directory" in msg or "zip archive" in msg or isinstance(e, zipfile.BadZipFile):
        return "not a valid torch file (corrupt or truncated zip archive)"
    if isinstance(e, (pickle.UnpicklingError, KeyError, UnicodeDecodeError, ValueError)):
        return "not a torch file (corrupt, or another format)"
    first = msg.strip().splitlines()[0]
    return first if "weights_only" not in first else "not loadable as weights"


def load_weights(path: str | Path, what: str, device: str = "cpu"):
    """``torch.load(path, weights_only=True)``; any failure -> ValueError naming the file."""
    import torch
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: cannot load the {what}: {_reason(e)}. spagraph loads saved files with "
                         "weights_only=True only; re-save the model with this spagraph (spagraph run --save-model)") from None


def load_gene_state(path: str | Path) -> dict:
    """A saved gene-encoder state. States saved before it was plain lists hold numpy arrays: those
    (and only those: numpy's array constructors, no other global) are allowed in."""
    import torch
    path = Path(path)
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "numpy" not in str(e):
            raise ValueError(f"{path}: cannot load the gene encoder state: {_reason(e)}") from None
        allowed = [np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64))]
        try:
            allowed.append(np._core.multiarray._reconstruct)
        except AttributeError:   # numpy < 2
            allowed.append(np.core.multiarray._reconstruct)
        try:
            with torch.serialization.safe_globals(allowed):
                st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:  # noqa: BLE001
            raise ValueError(f"{path}: cannot load the gene encoder state: {_reason(e2)}") from None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot load the gene encoder state: {_reason(e)}") from None
    if not isinstance(st, dict):
        raise ValueError(f"{path}: not a gene encoder state (expected a dict, got {type(st).__name__})")
    return st


def read_meta(path: str | Path) -> dict:
    """``meta.json`` of a saved model: valid JSON holding the keys a model needs."""
    path = Path(path)
    meta = read_json(path, "saved model's meta.json")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (not written by spagraph's save_model, or edited)")
    return meta


def load_val_scores(path: str | Path) -> np.ndarray:
    """``val_scores.npy``: a 1-d array of finite scores in [0, 1] (no pickles)."""
    path = Path(path)
    try:
        v = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"validation scores not found: {path}") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the validation scores (corrupt or truncated .npy?): {e}") from None
    v = np.asarray(v)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{path}: expected a 1-d numeric array of validation scores, got shape {v.shape} dtype {v.dtype}")
    if not np.isfinite(v).all() or (v.size and (v.min() < 0 or v.max() > 1)):
        raise ValueError(f"{path}: validation scores must be finite probabilities in [0, 1]")
    return v.astype(np.float64)
