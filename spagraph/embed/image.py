"""Image encoders behind one registry: ``handcrafted`` (default, offline), ``timm:<name>``, ``uni2h``.

Every encoder maps a slice to an (n_spots, d) float32 matrix, or ``None`` when the slice has
no image (recorded by the caller as ``has_image=False``). Nothing is fitted: the encoders are
frozen, so a slice's image embedding depends only on that slice and the encoder settings.

Settings (the ``settings`` dict shared with the gene encoders; unknown keys are rejected by
:func:`spagraph.embed.embed_slices`):

``patch_scale`` crop side in spot diameters (default 2.8, see :mod:`spagraph.embed.patches`);
``patch_px`` crop side in full-res px (overrides ``patch_scale``); ``batch_size`` (32);
``num_workers`` DataLoader workers (0); ``progress``;
handcrafted: ``patch_scales`` (default ``[1.0, 2.8]``: the spot itself and its context),
``patch_size`` working resolution in px (112);
timm / uni2h: ``weights`` local weights file, ``pretrained`` (download from the hub),
``device`` ("auto"), ``seed`` (random init, 0), ``model_kwargs`` (timm only);
GPU path (timm / uni2h): ``precision`` ("auto": bf16 autocast on CUDA, fp32 elsewhere; "bf16";
"fp32"), ``channels_last`` (default True on CUDA), ``compile`` (``torch.compile`` the model, False);
on CUDA each batch is copied from pinned memory (non-blocking); use ``num_workers`` > 0 so that
cropping overlaps the GPU. Precision enters the cache key (bf16 features differ from fp32 ones).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from spagraph.embed.patches import DEFAULT_PATCH_SCALE, SliceImage, iter_patch_batches, load_slice_image

UNI2H_KWARGS = dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                    mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8, dynamic_img_size=True)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COMMON_SETTINGS = {"patch_scale", "patch_px", "batch_size", "num_workers", "progress"}
IMAGE_SETTINGS = COMMON_SETTINGS | {"patch_scales", "patch_size", "weights", "pretrained", "device", "seed",
                                    "model_kwargs", "precision", "channels_last", "compile"}
KNOWN = ("handcrafted", "uni2h", "timm:<model name>")


class ImageEncoder:
    """Base class: crops every spot, encodes the crops batch by batch."""
    name = "base"

    def __init__(self, patch_scale: float = DEFAULT_PATCH_SCALE, patch_px: float | None = None, batch_size: int = 32,
                 num_workers: int = 0, progress: bool = False):
        self.patch_scale, self.patch_px = float(patch_scale), (float(patch_px) if patch_px else None)
        self.batch_size, self.num_workers, self.progress = int(batch_size), int(num_workers), bool(progress)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Output width."""
        raise NotImplementedError

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        """(b, S, S, 3) uint8 patches (S = ``input_size``) -> (b, dim) float32."""
        raise NotImplementedError

    def _encode_at(self, adata, image: SliceImage, patch_scale: float, patch_px: float | None) -> np.ndarray:
        out = [self.encode_patches(b) for b in iter_patch_batches(
            adata, self.input_size, patch_scale, patch_px, self.batch_size, self.num_workers, image=image,
            progress=self.progress, description=f"{self.name} patches")]
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def encode(self, adata) -> np.ndarray | None:
        """(n_spots, dim) float32 embedding of every spot's crop, or None when the slice has no image."""
        image = load_slice_image(adata)
        if image is None:
            return None
        return self._encode_at(adata, image, self.patch_scale, self.patch_px)

    def settings(self) -> dict:
        """Everything that changes the output (the cache key uses it)."""
        return {"patch_scale": self.patch_scale, "patch_px": self.patch_px, "input_size": self.input_size}


class HandcraftedEncoder(ImageEncoder):
    """Stain, colour, nucleus and texture statistics (:mod:`spagraph.embed.handcrafted`) at one
    or more crop sizes, concatenated: ``dim = len(FEATURE_NAMES) * len(patch_scales)``."""
    name = "handcrafted"

    def __init__(self, patch_scales: list[float] | None = None, patch_size: int = 112, **kw):
        super().__init__(**kw)
        if patch_scales is None:
            patch_scales = [1.0, self.patch_scale] if self.patch_px is None else [self.patch_scale]
        self.patch_scales = [float(s) for s in np.atleast_1d(patch_scales)]
        if not self.patch_scales or min(self.patch_scales) <= 0:
            raise ValueError(f"patch_scales must be positive numbers, got {patch_scales}")
        self.patch_size = int(patch_size)
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8 px, got {patch_size}")

    @property
    def input_size(self) -> int:
        return self.patch_size

    @property
    def dim(self) -> int:
        from spagraph.embed.handcrafted import FEATURE_NAMES
        return len(FEATURE_NAMES) * (1 if self.patch_px else len(self.patch_scales))

    def feature_names(self) -> list[str]:
        from spagraph.embed.handcrafted import FEATURE_NAMES
        if self.patch_px:
            return [f"px{self.patch_px:g}_{f}" for f in FEATURE_NAMES]
        return [f"s{s:g}_{f}" for s in self.patch_scales for f in FEATURE_NAMES]

    def encode(self, adata) -> np.ndarray | None:
        image = load_slice_image(adata)
        if image is None:
            return None
        if self.patch_px:                       # a fixed crop size: one scale
            return self._encode_at(adata, image, self.patch_scale, self.patch_px)
        return np.hstack([self._encode_at(adata, image, s, None) for s in self.patch_scales])

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        from spagraph.embed.handcrafted import patch_features
        return patch_features(patches)

    def settings(self) -> dict:
        return {"patch_scales": self.patch_scales, "patch_px": self.patch_px, "patch_size": self.patch_size,
                "features": len(self.feature_names())}


def _describe(v):
    """A stable, JSON-friendly name for a model kwarg (classes, functools.partial, callables)."""
    import functools
    if isinstance(v, functools.partial):
        args = [_describe(a) for a in v.args] + [f"{k}={_describe(x)}" for k, x in sorted(v.keywords.items())]
        return f"{_describe(v.func)}({', '.join(map(str, args))})"
    if isinstance(v, type) or callable(v):
        return getattr(v, "__qualname__", None) or getattr(v, "__name__", None) or type(v).__name__
    if isinstance(v, (list, tuple)):
        return [_describe(x) for x in v]
    return v


def _device(device: str):
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TimmEncoder(ImageEncoder):
    """Any timm backbone, pooled features (``num_classes=0``).

    Weights: ``weights`` (a local state-dict file), or ``pretrained=True`` (timm downloads
    them; needs hub access), else random initialisation (seeded, deterministic) with a loud
    warning: the features then carry no meaning. Input size, mean and std come from
    ``timm.data.resolve_data_config`` unless ``norm=(mean, std)`` is given; the crop itself is ours (``patch_scale``), resized to the
    input size, so timm's resize + centre-crop (which would change the field of view) is not applied.
    """

    def __init__(self, model_name: str, weights: str | None = None, pretrained: bool = False, device: str = "auto",
                 seed: int = 0, model_kwargs: dict | None = None, display_name: str | None = None,
                 norm: tuple | None = None, precision: str = "auto", channels_last: bool | None = None,
                 compile: bool = False, **kw):
        super().__init__(**kw)
        import timm
        import torch
        self.name = display_name or f"timm:{model_name}"
        self.model_name, self.weights, self.pretrained = model_name, (str(weights) if weights else None), bool(pretrained)
        kwargs = {"num_classes": 0, **(model_kwargs or {})}
        self._kwargs_repr = {k: _describe(v) for k, v in kwargs.items()}
        self.seed = int(seed)
        if self.weights and not Path(self.weights).is_file():
            raise FileNotFoundError(f"image encoder {self.name}: weights file not found: {self.weights}")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.weights:
                    self.model = timm.create_model(model_name, pretrained=False, **kwargs)
                else:
                    if not self.pretrained:
                        warnings.warn(f"image encoder {self.name}: no weights given, using RANDOM initialisation (seed "
                                      f"{self.seed}): its features are not meaningful (set settings.weights to a local "
                                      "weights file, or pretrained: true with hub access)", stacklevel=3)
                    self.model = timm.create_model(model_name, pretrained=self.pretrained, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e) or "Unknown" in str(e):
                raise ValueError(f"image encoder {self.name}: timm has no model {model_name!r} "
                                 f"(see timm.list_models())") from None
            raise
        if self.weights:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            state = {k.removeprefix("module."): v for k, v in state.items()}
            missing, _unexpected = self.model.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{self.weights}: {len(missing)} weight tensor(s) of {model_name} missing from the file, "
                                 f"e.g. {missing[:3]} (is it the right model?)")
        self.model.eval()
        self.device = _device(device)
        self.model.to(self.device)
        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"image encoder {self.name}: precision must be auto, bf16 or fp32, got {precision!r}")
        cuda = self.device.type == "cuda"
        self.precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model) if compile else self.model
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self._size = int(cfg["input_size"][-1])
        mean, std = norm if norm is not None else (cfg["mean"], cfg["std"])
        self._mean = np.array(mean, np.float32)[:, None, None]
        self._std = np.array(std, np.float32)[:, None, None]
        self._dim = int(getattr(self.model, "num_features", 0)) or int(self.encode_patches(
            np.zeros((1, self._size, self._size, 3), np.uint8)).shape[1])

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def dim(self) -> int:
        return self._dim

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        import torch
        x = (patches.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - self._mean) / self._std
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        else:
            t = t.to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            return self._forward(t).float().cpu().numpy()

    def settings(self) -> dict:
        return super().settings() | {"mean": self._mean.ravel().tolist(), "std": self._std.ravel().tolist(),
                                     "model": self.model_name, "weights": self.weights, "pretrained": self.pretrained,
                                     "seed": self.seed if not (self.weights or self.pretrained) else None,
                                     **({"precision": "bf16"} if self.precision == "bf16" else {}),
                                     "model_kwargs": self._kwargs_repr}


def uni2h_encoder(weights: str | None = None, pretrained: bool = False, _model_kwargs: dict | None = None,
                  **kw) -> TimmEncoder:
    """UNI2-h (ViT-H/14 with SwiGLU and 8 register tokens, 1536-d) through timm.

    Weights: a local ``pytorch_model.bin`` (``weights``), or ``pretrained=True`` to load the gated
    ``hf-hub:MahmoodLab/UNI2-h`` (the HF token is read from the environment by huggingface_hub,
    never passed here), else random weights with a warning. ImageNet mean/std at 224 px.
    ``_model_kwargs`` replaces the architecture kwargs (tests build it at depth 1).
    """
    import timm
    import torch
    mk = _model_kwargs or dict(UNI2H_KWARGS, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    # UNI2-h was trained with ImageNet normalisation; the vit_giant_patch14_224 default config
    # says mean = std = 0.5, so the statistics are set explicitly
    norm = (IMAGENET_MEAN, IMAGENET_STD)
    if weights is None and pretrained:
        return TimmEncoder("hf-hub:MahmoodLab/UNI2-h", pretrained=True, model_kwargs=mk, display_name="uni2h",
                           norm=norm, **kw)
    return TimmEncoder("vit_giant_patch14_224", weights=weights, model_kwargs=mk, display_name="uni2h", norm=norm, **kw)


def _split(settings: dict, allowed: set) -> dict:
    return {k: v for k, v in settings.items() if k in allowed}


def get_image_encoder(name: str | None, settings: dict | None = None) -> ImageEncoder | None:
    """Registry: ``handcrafted`` | ``timm:<model>`` | ``uni2h`` | None (no image modality).

    ``settings`` may hold gene-encoder keys too (one shared block); only image keys are used.
    """
    if name is None:
        return None
    s = _split(dict(settings or {}), IMAGE_SETTINGS)
    if name == "handcrafted":
        return HandcraftedEncoder(**_split(s, COMMON_SETTINGS | {"patch_scales", "patch_size"}))
    deep = _split(s, IMAGE_SETTINGS - {"patch_scales", "patch_size"})
    if name == "uni2h":
        deep.pop("model_kwargs", None)
        return uni2h_encoder(**deep)
    if isinstance(name, str) and name.startswith("timm:") and name[5:].strip():
        return TimmEncoder(name[5:].strip(), **deep)
    raise ValueError(f"unknown image encoder {name!r}; known: {', '.join(KNOWN)} (or None: no image modality)")
