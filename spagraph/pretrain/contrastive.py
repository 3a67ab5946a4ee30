"""Image-gene contrastive pretraining on unannotated sections with H&E (her2st B4, C2-C6).

The two token streams of :class:`spagraph.nn.model.SpaGraphNet` (input projection + MSFA layers per
modality) and the per-modality transformers of the fusion block are trained, without labels, so
that a spot's pooled image vector and pooled gene vector find each other among the other spots of
its slice (symmetric InfoNCE, :func:`spagraph.nn.losses.info_nce`, the same term the supervised
loss adds with ``contrastive_weight``). The supervised fit then starts from these weights
(:func:`spagraph.train.fit.fit`'s ``warm_start``); the cross-attention, head and linear prior
start fresh.

The patient rule (``../shared/data/README.md``): the letter of a her2st section is its patient;
while a section of patient X is predicted, no other section of patient X may be used.
:func:`check_patient_rule` refuses such a request and every entry point here calls it
(:func:`load_pretrain_slices` before reading a file, :func:`pretrain_contrastive` before a step).

Image resolution: the annotated A1 ships as a 2000-px downscale (about 3.2 um/px), the unannotated
sections at full resolution (about 0.69 um/px). The handcrafted features (nucleus areas, texture)
depend on the pixel size, so each pretraining image is resampled to A1's pixels per spot pitch
(:func:`a1_pitch_px`, the spot pitch in A1's PNG; label-free) before patches are cut.

Why hand-written: the objective acts on spagraph's own multi-scale token streams; no library
pretrains them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch_geometric.data import Data

from spagraph.pretrain.pool import PatientLeak, patient_of, same_patient

# the unannotated her2st sections that have an H&E image
PRETRAIN_SECTIONS = ("B4", "C2", "C3", "C4", "C5", "C6")
MAX_SPOTS = 512             # spots sampled per slice and step for InfoNCE
GRAD_CLIP = 1.0
PRETRAINED_PREFIXES = ("img.", "gene.", "fusion.enc_img.", "fusion.enc_gene.")


class PatientRuleError(PatientLeak):
    """A section of a predicted section's patient was asked for (a :class:`spagraph.pretrain.pool.PatientLeak`)."""


def patient(name: str) -> str:
    """her2st patient of a section (``"C3" -> "C"``; :func:`spagraph.pretrain.pool.patient_of`)."""
    return patient_of(name).upper()


def check_patient_rule(pretrain: Iterable[str], predicted: Iterable[str]) -> list[str]:
    """Return ``pretrain`` as a list, or raise :class:`PatientRuleError` when any of its sections
    belongs to the patient of a ``predicted`` section (or is one). ``predicted`` must name at least
    one section: pretraining without knowing what will be predicted cannot be proven safe."""
    pretrain, predicted = list(pretrain), list(predicted)
    if not predicted:
        raise PatientRuleError("name the section(s) that will be predicted (predicted=[...]): the patient "
                               "rule cannot be checked without them")
    upper = [s.upper() for s in pretrain]          # her2st patients are letters: "c3" is patient C too
    banned = set(same_patient(upper, [p.upper() for p in predicted]))
    bad = [s for s, u in zip(pretrain, upper) if u in banned]
    if bad:
        raise PatientRuleError(
            f"pretraining sections {bad} belong to the patient(s) {sorted({patient(s) for s in bad})} of the "
            f"predicted section(s) {predicted}: no section of a predicted section's patient may be used "
            "for pretraining (patient rule, ../shared/data/README.md)")
    return pretrain


def a1_pitch_px(her2st_root: str | Path) -> float:
    """Spot pitch of A1 in its shipped PNG's pixels (read from A1's spot table and image size)."""
    from spagraph.graph.neighbours import spot_pitch
    from spagraph.io import read_her2st
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # A1's known orphan label rows: positions are all we read
        a = read_her2st(her2st_root, "A1", image=True)
    lib = next(iter(a.uns["spatial"].values()))
    return float(spot_pitch(np.asarray(a.obsm["spatial"])) * lib["scalefactors"]["tissue_hires_scalef"])


def resample_to_pitch(adata, pitch_px: float) -> None:
    """Replace the slice's image by its full-resolution file resampled so that one spot pitch spans
    ``pitch_px`` pixels (``uns["spatial"][lib]["images"]["hires"]`` and its scale factors), and
    drop ``image_path`` so that encoders crop from it. Needs ``uns["spagraph_slice"]["image_path"]``."""
    from PIL import Image
    from spagraph.graph.neighbours import spot_pitch
    from spagraph.io.validate import read_image_rgb8
    meta = adata.uns["spagraph_slice"]
    path = meta.get("image_path")
    if not path:
        raise ValueError(f"slice {meta.get('library_id')}: no full-resolution image_path to resample")
    scale = float(pitch_px) / spot_pitch(np.asarray(adata.obsm["spatial"]))
    with Image.open(path) as im:
        w, h = im.size
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    img = read_image_rgb8(path, draft_size=(tw, th))
    img = np.asarray(img.resize((tw, th), Image.BILINEAR), dtype=np.uint8)
    lib = next(iter(adata.uns["spatial"].values()))
    lib["images"] = {"hires": img}
    lib["scalefactors"]["tissue_hires_scalef"] = tw / w
    lib["scalefactors"]["tissue_lowres_scalef"] = tw / w
    adata.uns["spagraph_slice"] = {k: v for k, v in meta.items() if k != "image_path"}


def load_pretrain_slices(root: str | Path, names: Iterable[str], cache: str | Path | None, predicted: Iterable[str],
                         her2st_root: str | Path | None = None) -> list:
    """The pretraining sections as AnnData with ``obsm["img_emb"]`` (handcrafted, at A1's pixels per
    pitch, cached in ``cache``), refusing same-patient sections first (:func:`check_patient_rule`)."""
    import warnings
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    from spagraph.embed.image import get_image_encoder
    from spagraph.io import read_her2st
    names = check_patient_rule(names, predicted)
    root = Path(root)
    pitch = a1_pitch_px(her2st_root or root.parent / "her2st")
    enc = get_image_encoder("handcrafted", {})
    c = EmbeddingCache(cache) if cache else None
    out = []
    for n in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # 'selected = 0 spots dropped' notes
            a = read_her2st(root, n, image=True)
        resample_to_pitch(a, pitch)
        key = cache_key(slice_hash(a), "handcrafted", enc.settings())
        emb = c.get(key, n_rows=a.n_obs) if c else None
        if emb is None:
            emb = enc.encode(a)
            if c:
                c.put(key, emb, meta={"slice": n, "encoder": "handcrafted", "settings": enc.settings(),
                                      "pitch_px": pitch})
        a.obsm["img_emb"] = emb
        out.append(a)
    return out


@dataclass
class PretrainResult:
    state: dict                                   # weights under PRETRAINED_PREFIXES (warm_start)
    history: list[float] = field(default_factory=list)   # mean InfoNCE per epoch


def pretrain_contrastive(graphs: list[Data], model_settings, epochs: int, seed: int, predicted: Iterable[str],
                         lr: float = 1e-3, weight_decay: float = 1e-2) -> PretrainResult:
    """Train the image and gene streams (and the per-modality fusion transformers) by InfoNCE on
    ``graphs`` (slice graphs with both ``x_img`` and ``x_gene``; ``graph.name`` the section),
    ``epochs`` passes of one step per slice in random order, up to :data:`MAX_SPOTS` spots per step.
    Refuses graphs of a ``predicted`` section's patient (:func:`check_patient_rule`).
    Returns the trained weights under :data:`PRETRAINED_PREFIXES` and the loss per epoch."""
    from spagraph.nn.losses import info_nce
    from spagraph.nn.model import SpaGraphNet
    from spagraph.train.fit import seed_everything
    check_patient_rule([str(g.name) for g in graphs], predicted)
    if not graphs or any(g.x_img.shape[1] == 0 or g.x_gene.shape[1] == 0 for g in graphs):
        raise ValueError("contrastive pretraining needs slices with both image and gene embeddings")
    seed_everything(seed)
    g0 = graphs[0]
    ms = model_settings.model_copy(update={"linear_path": False})
    model = SpaGraphNet(g0.x_img.shape[1], g0.x_gene.shape[1], g0.num_scales, g0.n_dir_bins, ms)
    params = [p for n, p in model.named_parameters() if n.startswith(PRETRAINED_PREFIXES)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    hist = []
    model.train()
    for _ in range(epochs):
        losses = []
        for gi in rng.permutation(len(graphs)):
            g = graphs[gi]
            out = model(g, 0.0)
            idx = torch.randperm(g.num_nodes, generator=gen)[:MAX_SPOTS]
            loss = info_nce(out["z_img"][idx], out["z_gene"][idx], ms.temperature)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            losses.append(float(loss.detach()))
        hist.append(float(np.mean(losses)))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(PRETRAINED_PREFIXES)}
    return PretrainResult(state=state, history=hist)
