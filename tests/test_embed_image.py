"""Image encoders: handcrafted features carry morphology, are batch-independent; registry errors;
timm random-init warning/determinism; UNI2-h architecture (1536-d)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from spagraph.embed.handcrafted import FEATURE_NAMES, patch_features, stain_density
from spagraph.embed.image import UNI2H_KWARGS, get_image_encoder


def _tissue_patch(rng, n_nuclei: int, side: int = 112) -> np.ndarray:
    """Pink eosin background with ``n_nuclei`` dark purple discs of radius 3."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (235, 160, 200)
    yy, xx = np.mgrid[:side, :side]
    for cx, cy in rng.uniform(4, side - 4, (n_nuclei, 2)):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 9] = (70, 40, 130)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def _f(x, name):
    return x[:, FEATURE_NAMES.index(name)]


def test_stain_density_equals_skimage_rgb2hed():
    from skimage.color import rgb2hed
    b = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ref = rgb2hed(b.reshape(-1, 16, 3)).reshape(2, 16, 16, 3)[..., :2]
    np.testing.assert_allclose(stain_density(b), ref, atol=1e-5)


def test_features_track_nuclei_tissue_and_stain():
    rng = np.random.default_rng(1)
    sparse, dense = _tissue_patch(rng, 5), _tissue_patch(rng, 60)
    glass = np.full((112, 112, 3), 245, np.uint8)
    half = sparse.copy()
    half[:, 56:] = 255                                           # half the patch off the tissue
    f = patch_features(np.stack([sparse, dense, glass, half]))
    assert f.shape == (4, len(FEATURE_NAMES)) and f.dtype == np.float32 and np.isfinite(f).all()
    assert _f(f, "nuclei_density")[1] > 3 * _f(f, "nuclei_density")[0] > 0
    assert _f(f, "nuclei_frac")[1] > _f(f, "nuclei_frac")[0]
    assert _f(f, "h_mean")[1] > _f(f, "h_mean")[0]
    assert _f(f, "tissue_frac")[0] > 0.95 and _f(f, "tissue_frac")[2] < 0.05
    assert abs(_f(f, "tissue_frac")[3] - 0.5) < 0.05
    assert 8 <= _f(f, "nuclei_area_mean")[0] <= 40            # radius-3 discs: ~29 px
    np.testing.assert_allclose(f[:, [FEATURE_NAMES.index(f"lbp{i}") for i in range(9)]].sum(1), 1, atol=1e-5)


def test_glcm_contrast_matches_skimage():
    from skimage.feature import graycomatrix, graycoprops
    from spagraph.embed.handcrafted import _glcm_props
    q = np.random.default_rng(2).integers(0, 8, (3, 20, 20))
    mine = _glcm_props(q, 8)
    for i in range(3):
        m = graycomatrix(q[i].astype(np.uint8), [1], [0, np.pi / 2], levels=8, symmetric=True, normed=True)
        assert mine[0, i] == pytest.approx(graycoprops(m, "contrast").mean(), rel=1e-6)
        assert mine[1, i] == pytest.approx(graycoprops(m, "homogeneity").mean(), rel=1e-6)


def test_features_do_not_depend_on_the_batch_and_are_deterministic():
    rng = np.random.default_rng(3)
    b = np.stack([_tissue_patch(rng, k, 224) for k in (0, 10, 40, 80)])
    full = patch_features(b)
    for i in range(4):
        np.testing.assert_array_equal(patch_features(b[i:i + 1])[0], full[i])
    np.testing.assert_array_equal(patch_features(b[::-1])[::-1], full)


def test_patch_features_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        patch_features(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        patch_features(np.zeros((1, 8, 8), np.uint8))
    assert patch_features(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, len(FEATURE_NAMES))


def test_handcrafted_encoder_multiscale_on_synthetic_slice():
    from spagraph.io.synthetic import make_synthetic_slice
    a = make_synthetic_slice(n_spots=60, seed=0)
    enc = get_image_encoder("handcrafted", {"patch_scales": [1.0, 2.8], "patch_size": 64, "batch_size": 16})
    e = enc.encode(a)
    assert e.shape == (60, 2 * len(FEATURE_NAMES)) == (60, enc.dim) and e.dtype == np.float32
    assert len(enc.feature_names()) == enc.dim
    np.testing.assert_array_equal(e, enc.encode(a))
    assert not np.allclose(e[:, : len(FEATURE_NAMES)], e[:, len(FEATURE_NAMES):])   # scales differ
    assert get_image_encoder("handcrafted", {}).encode(make_synthetic_slice(n_spots=20, seed=1, with_image=False)) is None


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="known: handcrafted, uni2h, timm:<model name>"):
        get_image_encoder("resnet", {})
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        get_image_encoder("timm:resnet18", {"weights": str(tmp_path / "nope.bin")})
    with pytest.raises(ValueError, match="patch_scales"):
        get_image_encoder("handcrafted", {"patch_scales": [0.0]})
    assert get_image_encoder(None, {}) is None


def test_timm_random_init_warns_is_deterministic_and_batch_free():
    pytest.importorskip("timm")
    with pytest.warns(UserWarning, match="RANDOM"):
        enc = get_image_encoder("timm:resnet18", {"batch_size": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc2 = get_image_encoder("timm:resnet18", {})
    x = np.random.default_rng(4).integers(0, 256, (3, enc.input_size, enc.input_size, 3), dtype=np.uint8)
    y = enc.encode_patches(x)
    assert y.shape == (3, enc.dim) == (3, 512)
    np.testing.assert_allclose(enc2.encode_patches(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(enc.encode_patches(x[1:2])[0], y[1], rtol=1e-4, atol=1e-4)


def test_timm_local_weights_file(tmp_path):
    import torch
    import timm
    m = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.manual_seed(5)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    enc = get_image_encoder("timm:resnet18", {"weights": str(tmp_path / "w.pt")})
    x = np.random.default_rng(6).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    m.eval()
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(enc._mean[:, 0, 0])[:, None, None]) \
        / torch.tensor(enc._std[:, 0, 0])[:, None, None]
    with torch.no_grad():
        np.testing.assert_allclose(enc.encode_patches(x), m(xt).numpy(), rtol=1e-4, atol=1e-5)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        get_image_encoder("timm:resnet18", {"weights": str(tmp_path / "bad.pt")})


def test_uni2h_architecture_small_depth():
    """UNI2-h's published kwargs build a 1536-d ViT with 8 register tokens (depth cut to 1 here;
    the full model is tested in test_uni2h_full_random_weights, marked slow)."""
    import timm
    import torch
    mk = dict(UNI2H_KWARGS, depth=1, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    m = timm.create_model("vit_giant_patch14_224", pretrained=False, **mk).eval()
    assert m.num_features == 1536 and m.num_reg_tokens == 8
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 224, 224)).shape == (1, 1536)


@pytest.mark.slow
def test_uni2h_full_random_weights():
    """Full UNI2-h (681M parameters), random weights: ~20 s to build, ~5-10 s per patch on 2 CPU cores."""
    with pytest.warns(UserWarning, match="RANDOM"):
        enc = get_image_encoder("uni2h", {})
    assert enc.dim == 1536 and enc.input_size == 224
    x = np.random.default_rng(7).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    y = enc.encode_patches(x)
    assert y.shape == (2, 1536) and np.isfinite(y).all()
    np.testing.assert_allclose(enc.encode_patches(x[1:2])[0], y[1], rtol=1e-4, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc2 = get_image_encoder("uni2h", {})
    np.testing.assert_allclose(enc2.encode_patches(x[:1])[0], y[0], rtol=1e-4, atol=1e-4)


def test_uni2h_kwargs_through_the_encoder_deterministic_and_batch_free():
    """The encoder path (normalisation, batching) on the UNI2-h architecture cut to depth 1: two
    builds agree (seeded random init) and a patch's features do not depend on its batch."""
    import timm
    import torch
    mk = dict(UNI2H_KWARGS, depth=1, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    from spagraph.embed.image import uni2h_encoder
    with pytest.warns(UserWarning, match="RANDOM"):
        e1 = uni2h_encoder(_model_kwargs=mk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e2 = uni2h_encoder(_model_kwargs=mk)
        e3 = uni2h_encoder(_model_kwargs=mk, seed=1)
    assert e1.dim == 1536 and e1.input_size == 224 and e1.name == "uni2h"
    np.testing.assert_allclose(e1._mean[:, 0, 0], [0.485, 0.456, 0.406], atol=1e-6)   # ImageNet stats, as
    np.testing.assert_allclose(e1._std[:, 0, 0], [0.229, 0.224, 0.225], atol=1e-6)    # UNI2-h was trained
    x = np.random.default_rng(8).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    y = e1.encode_patches(x)
    assert y.shape == (2, 1536) and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(e2.encode_patches(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(e1.encode_patches(x[1:]), y[1:], rtol=1e-4, atol=1e-4)
    assert not np.allclose(e3.encode_patches(x), y, atol=1e-3)          # the seed matters
    assert not np.allclose(y[0], y[1], atol=1e-4)                       # the input matters
    import json
    st = json.dumps(e1.settings(), sort_keys=True)                    # the cache key: stable, no addresses
    assert "0x" not in st and e1.settings()["model_kwargs"]["act_layer"] == "SiLU"
    assert "Glu" in e1.settings()["model_kwargs"]["mlp_layer"]         # SwiGLU(Packed) = GluMlp partial in timm


def test_gpu_path_settings_bf16_channels_last_on_cpu():
    """The GPU path's switches work on CPU too: bf16 autocast and channels_last stay close to fp32,
    and bf16 enters the cache key (fp32 on CPU leaves the key as it was)."""
    pytest.importorskip("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = get_image_encoder("timm:resnet18", {"device": "cpu"})
        fast = get_image_encoder("timm:resnet18", {"device": "cpu", "precision": "bf16", "channels_last": True})
    assert ref.precision == "fp32" and not ref.channels_last and "precision" not in ref.settings()
    assert fast.settings()["precision"] == "bf16"
    x = np.random.default_rng(5).integers(0, 256, (2, ref.input_size, ref.input_size, 3), dtype=np.uint8)
    a, b = ref.encode_patches(x), fast.encode_patches(x)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    with pytest.raises(ValueError, match="precision"):
        get_image_encoder("timm:resnet18", {"device": "cpu", "precision": "fp8"})
