"""The seed-idea baselines are real codecs: exact round-trip shapes, rate and quality move the
right way with their knobs, and the bytes are what the module docstring says they are."""

from __future__ import annotations

import zlib

import msgpack
import numpy as np
import pytest
import torch

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.errors import NotABitstream
from shared.images import load_image, psnr
from shared.tools import SAMPLES
from shared.tools.baselines import (AE_LATENT_CHANNELS, PCA_FILE, AEConfig, PCABasis, PCACodec,
                                    PlainAutoencoder, ae_file)


@pytest.fixture(scope="module")
def basis():
    images = [load_image(p).rgb for p in sorted(SAMPLES.glob("*.png"))]
    return PCABasis.fit(images, patches_per_image=300)


def test_pca_basis_is_orthonormal_and_sorted(basis):
    assert basis.components.shape == (192, 192)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(192), atol=1e-9)
    assert np.all(np.diff(basis.variances) <= 1e-9)


def test_pca_round_trip_shape_and_quality_knobs(basis, sample_rgb):
    def run(k, step):
        data = PCACodec(basis, k, step).encode(sample_rgb)
        out = PCACodec(basis, 192, 1.0).decode(data)  # K and step travel in the header
        assert out.shape == sample_rgb.shape and out.dtype == np.uint8
        return len(data), psnr(sample_rgb, out)

    (b_k8, p_k8), (b_k48, p_k48) = run(8, 8.0), run(48, 8.0)
    assert p_k48 > p_k8 + 2 and b_k48 > b_k8
    (b_coarse, p_coarse), (b_fine, p_fine) = run(48, 32.0), run(48, 4.0)
    assert p_fine > p_coarse + 6 and b_fine > b_coarse
    assert p_fine > 38


def test_pca_stream_is_msgpack_with_header_and_deterministic(basis, sample_rgb):
    codec = PCACodec(basis, 32, 10.0)
    data = codec.encode(sample_rgb)
    assert data == codec.encode(sample_rgb)
    m = msgpack.unpackb(data)
    assert (m["fmt"], m["h"], m["w"], m["k"], m["step"]) == ("lw-pca", 71, 97, 32, 10.0)
    assert len(m["scales"]) == 32
    with pytest.raises(NotABitstream):
        codec.decode(b"\x00not msgpack")


def test_pca_basis_file_round_trip(basis, tmp_path, sample_rgb):
    loaded = PCABasis.load(basis.save(tmp_path / PCA_FILE))
    a = PCACodec(basis, 64, 6.0)
    b = PCACodec(loaded, 64, 6.0)
    assert psnr(a.decode(a.encode(sample_rgb)), b.decode(b.encode(sample_rgb))) > 45


def test_plain_ae_bytes_are_zlib_of_8bit_latents(sample_rgb):
    sizes = {}
    H, W = sample_rgb.shape[:2]
    for C in (4, 12):
        torch.manual_seed(0)
        model = PlainAutoencoder(AEConfig(C=C)).eval()
        data = model.encode(sample_rgb)
        m = msgpack.unpackb(data)
        raw = zlib.decompress(m["data"])
        assert len(raw) == C * -(-H // 8) * -(-W // 8)  # one byte per latent
        assert set(m) == {"fmt", "v", "h", "w", "c", "lo", "hi", "data"} and m["lo"] < m["hi"]
        out = model.decode(data)
        assert out.shape == sample_rgb.shape and out.dtype == np.uint8
        sizes[C] = len(data)
    assert sizes[12] > sizes[4]


def test_plain_ae_file_loads_with_weights_only(tmp_path, sample_rgb):
    model = PlainAutoencoder(AEConfig(C=4))
    model.save(tmp_path / ae_file(4), {"note": "test"})
    loaded = PlainAutoencoder.load(4, tmp_path)
    assert loaded.train_config == {"note": "test"}
    assert loaded.encode(sample_rgb) == model.eval().encode(sample_rgb)


SHIPPED = [DEFAULT_MODELS_DIR / PCA_FILE] + [DEFAULT_MODELS_DIR / ae_file(c) for c in AE_LATENT_CHANNELS]


@pytest.mark.skipif(not all(p.exists() for p in SHIPPED), reason="baseline files not shipped")
def test_shipped_baselines_reconstruct_in_a_psnr_band(sample_rgb):
    pca = PCACodec.load(64, 12.0)
    assert psnr(sample_rgb, pca.decode(pca.encode(sample_rgb))) > 30
    psnrs = []
    for C in AE_LATENT_CHANNELS:
        ae = PlainAutoencoder.load(C)
        psnrs.append(psnr(sample_rgb, ae.decode(ae.encode(sample_rgb))))
    assert min(psnrs) > 18 and psnrs[-1] > psnrs[0]  # bigger latent, sharper


def test_train_autoencoder_writes_a_loadable_file(tmp_path):
    import random

    from shared.tools.baselines import train_autoencoder

    class Crops:  # the part of shared.tools.train.CropSampler that training uses
        crop = 16
        images = [torch.zeros(3, 16, 16, dtype=torch.uint8)]
        rng = random.Random(0)

        def sample(self, n):
            return torch.rand(n, 3, 16, 16)

    path = train_autoencoder(Crops(), 4, tmp_path / ae_file(4), steps=3, log=lambda *_: None)
    loaded = PlainAutoencoder.load(4, tmp_path)
    assert loaded.train_config["steps"] == 3 and loaded.config.C == 4 and path.exists()
