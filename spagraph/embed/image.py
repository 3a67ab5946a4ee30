"""Image encoders behind one registry: ``handcrafted`` (default, offline), ``timm:<name>``, ``uni2h``.

Every encoder maps a slice to an (n_spots, d) float32 matrix, or ``None`` when the slice has
no image (recorded by the caller as ``has_image=False``).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from spagraph.embed.patches import best_image, extract_patches

UNI2H_KWARGS = dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                    mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8, dynamic_img_size=True)


class ImageEncoder:
    name = "base"

    def __init__(self, patch_scale: float = 4.5, batch_size: int = 32, progress: bool = False, **_):
        self.patch_scale, self.batch_size, self.progress = float(patch_scale), int(batch_size), progress

    @property
    def input_size(self) -> int:
        return 64

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, adata) -> np.ndarray | None:
        if best_image(adata)[0] is None:
            return None
        n = adata.n_obs
        out = []
        it = range(0, n, self.batch_size)
        if self.progress:
            from rich.progress import track
            it = track(list(it), description=f"{self.name} patches")
        for s in it:
            idx = np.arange(s, min(s + self.batch_size, n))
            out.append(self.encode_patches(extract_patches(adata, self.patch_scale, self.input_size, idx)))
        return np.vstack(out).astype(np.float32)

    def settings(self) -> dict:
        return {"patch_scale": self.patch_scale, "input_size": self.input_size}


class HandcraftedEncoder(ImageEncoder):
    """Stain, colour, nucleus and texture statistics at one or more patch sizes."""
    name = "handcrafted"

    def __init__(self, patch_scales: list[float] | None = None, patch_size: int = 64, **kw):
        super().__init__(**kw)
        self.patch_scales = [float(s) for s in (patch_scales or [self.patch_scale])]
        self.patch_size = int(patch_size)

    @property
    def input_size(self) -> int:
        return self.patch_size

    def encode(self, adata) -> np.ndarray | None:
        from spagraph.embed.handcrafted import patch_features
        if best_image(adata)[0] is None:
            return None
        mats = []
        for s in self.patch_scales:
            self.patch_scale = s
            mats.append(super().encode(adata))
        return np.hstack(mats)

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        from spagraph.embed.handcrafted import patch_features
        return patch_features(patches)

    def settings(self) -> dict:
        return {"patch_scales": self.patch_scales, "patch_size": self.patch_size}


class TimmEncoder(ImageEncoder):
    """Any timm backbone (pooled features). Weights: a local file, or the hub when reachable;
    otherwise random initialisation with a loud warning (features then carry no meaning)."""

    def __init__(self, model_name: str, weights: str | None = None, pretrained: bool = False, device: str = "auto",
                 model_kwargs: dict | None = None, **kw):
        super().__init__(**kw)
        import timm
        import torch
        self.name = f"timm:{model_name}"
        self.model_name, self.weights = model_name, weights
        kwargs = {"num_classes": 0, **(model_kwargs or {})}
        if weights:
            if not Path(weights).exists():
                raise FileNotFoundError(f"image encoder weights not found: {weights}")
            self.model = timm.create_model(model_name, pretrained=False, **kwargs)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{weights}: {len(missing)} weights missing for {model_name}, e.g. {missing[:3]}")
        else:
            if pretrained:
                self.model = timm.create_model(model_name, pretrained=True, **kwargs)
            else:
                warnings.warn(f"image encoder {self.name}: no weights given, using RANDOM initialisation: "
                              "its features are not meaningful (set embed.settings.weights to a local file)")
                self.model = timm.create_model(model_name, pretrained=False, **kwargs)
        self.model.eval()
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model.to(self.device)
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self._size = int(cfg["input_size"][-1])
        self._mean = np.array(cfg["mean"], np.float32)[:, None, None]
        self._std = np.array(cfg["std"], np.float32)[:, None, None]

    @property
    def input_size(self) -> int:
        return self._size

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        import torch
        x = (patches.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - self._mean) / self._std
        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def settings(self) -> dict:
        return super().settings() | {"model": self.model_name, "weights": str(self.weights)}


def uni2h_encoder(weights: str | None = None, **kw) -> TimmEncoder:
    """UNI2-h (ViT-H/14, 1536-d) through timm: local weights, the gated hub id when the user
    has access (HF token read from the environment by huggingface_hub), else random weights."""
    import timm
    import torch
    mk = dict(UNI2H_KWARGS, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    if weights is None and os.environ.get("HF_TOKEN") and os.environ.get("HF_HUB_OFFLINE") != "1":
        enc = TimmEncoder("hf-hub:MahmoodLab/UNI2-h", pretrained=True, model_kwargs=mk, **kw)
    else:
        enc = TimmEncoder("vit_giant_patch14_224", weights=weights, model_kwargs=mk, **kw)
    enc.name = "uni2h"
    return enc


def get_image_encoder(name: str | None, settings: dict | None = None) -> ImageEncoder | None:
    """Registry: ``handcrafted`` | ``timm:<model>`` | ``uni2h`` | None (no image modality)."""
    if name is None:
        return None
    s = dict(settings or {})
    for k in ("n_hvg", "n_pcs", "top_n", "drop_housekeeping", "text_model", "omiclip_weights"):
        s.pop(k, None)   # gene-encoder settings share the embed.settings block
    if name == "handcrafted":
        return HandcraftedEncoder(**s)
    if name == "uni2h":
        return uni2h_encoder(**s)
    if name.startswith("timm:"):
        return TimmEncoder(name.split(":", 1)[1], **s)
    raise ValueError(f"unknown image encoder {name!r}; known: handcrafted, uni2h, timm:<model name>")
