import numpy as np
import pytest

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.pca import PCA, heatmap_rgb, pca_rgb


def test_pca_recovers_a_low_rank_map_and_is_reusable(rng, tmp_path):
    basis = rng.normal(size=(16, 2))
    codes = rng.normal(size=(2, 20, 30))
    feats = np.einsum("ck,khw->chw", basis, codes).astype(np.float32) + 3.0
    pca = PCA(2, max_samples=300).fit(feats)
    proj = pca.transform(feats)
    assert proj.shape == (2, 20, 30)
    recon = np.einsum("kc,khw->chw", pca.components_, proj) + pca.mean_[:, None, None]
    np.testing.assert_allclose(recon, feats, atol=1e-3)
    other = np.einsum("ck,khw->chw", basis, rng.normal(size=(2, 5, 7))).astype(np.float32) + 3.0
    again = PCA.load(pca.save(tmp_path / "pca.npz"))
    np.testing.assert_allclose(again.transform(other), pca.transform(other), atol=1e-5)
    assert pca.transform(feats.reshape(16, -1).T).shape == (600, 2)


def test_pictures_are_uint8_rgb(rng):
    feats = rng.normal(size=(8, 12, 10)).astype(np.float32)
    rgb = pca_rgb(feats)
    assert rgb.shape == (12, 10, 3) and rgb.dtype == np.uint8 and rgb.max() > 200 and rgb.min() < 50
    assert heatmap_rgb(rng.random((12, 10))).shape == (12, 10, 3)


def test_pca_errors(rng):
    with pytest.raises(ConfigError, match="not fitted"):
        PCA(2).transform(rng.normal(size=(4, 3, 3)))
    with pytest.raises(ShapeError, match="fitted on 4 channels but got 5"):
        PCA(2).fit(rng.normal(size=(4, 6, 6))).transform(rng.normal(size=(5, 6, 6)))
    with pytest.raises(ConfigError, match="exceeds"):
        PCA(10).fit(rng.normal(size=(4, 6, 6)))
