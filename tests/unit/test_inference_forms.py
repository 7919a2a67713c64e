"""The coding copies of the transforms (``shared.network.InferenceTransform``) and the precision
choice: the subpixel form computes what the transposed convolution computes, bf16 stays close to
float32, and ``precision`` is resolved and reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.models.utils import deconv
from torch import nn

from shared.codec import Codec, resolve_precision
from shared.images import psnr
from shared.network import InferenceTransform, SubpixelDeconv


@pytest.mark.parametrize("c_in,c_out,height,width", [(8, 5, 1, 1), (16, 3, 7, 5), (12, 12, 9, 16)])
def test_subpixel_form_equals_the_transposed_convolution(c_in, c_out, height, width):
    torch.manual_seed(0)
    layer = deconv(c_in, c_out)  # 5x5, stride 2, padding 2, output_padding 1
    x = torch.randn(2, c_in, height, width)

    with torch.no_grad():
        want = layer(x)
        got = SubpixelDeconv(layer)(x)

    assert got.shape == want.shape == (2, c_out, 2 * height, 2 * width)
    assert float((got - want).abs().max()) < 1e-5


def test_subpixel_form_refuses_other_deconvolutions():
    with pytest.raises(ValueError, match="5x5, stride-2"):
        SubpixelDeconv(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1))


def test_inference_transform_keeps_the_output_layer_in_float32(tiny_codec):
    bf16 = InferenceTransform(tiny_codec.model.g_s, torch.bfloat16)
    y = torch.randn(1, tiny_codec.model.config.M, 3, 4)

    with torch.inference_mode():
        out = bf16(y)
        ref = tiny_codec.model.g_s(y)

    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, 3, 48, 64)
    assert {p.dtype for p in bf16.body.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.head.parameters()} == {torch.float32}
    assert float((out - ref).abs().max()) < 0.05  # bf16 keeps about 3 significant digits


def test_float_conversion_of_a_channels_last_tensor_keeps_values_and_layout():
    from shared.network import _float_channels_last

    x = torch.randn(2, 5, 7, 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    got = _float_channels_last(x)

    assert got.dtype == torch.float32 and got.shape == (2, 5, 7, 3)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, x.float())


def test_a_cpu_codec_keeps_freed_buffers_where_the_c_library_is_glibc(tiny_codec):
    import platform

    from shared.codec import keep_freed_buffers

    assert keep_freed_buffers() is (platform.libc_ver()[0] == "glibc")
    assert keep_freed_buffers.cache_info().misses == 1  # set once per process


def test_precision_is_resolved_and_reported(tiny_codec):
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert tiny_codec.info()["precision"] == tiny_codec.precision in ("fp32", "bf16")
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.slow
def test_bf16_costs_the_shipped_model_under_a_tenth_of_a_db(shipped_codec, kodim_rgb):
    # Measured on kodim23_half with lw-vr-hyperprior-38e7d9f7 and -56539fc6: bf16 decoding loses
    # 0.004-0.007 dB at quality 0.5 and 0.015-0.016 dB at 1.0; bytes move by 0.1-0.15 %; pixels by
    # at most 2 grey levels.
    fp32 = Codec(shipped_codec.model, shipped_codec.name, shipped_codec.weights, precision="fp32")
    bf16 = Codec(shipped_codec.model, shipped_codec.name, shipped_codec.weights, precision="bf16")

    for quality in (0.5, 1.0):
        data = fp32.encode(kodim_rgb, quality=quality).data
        db32 = psnr(kodim_rgb, fp32.decode(data))
        db16 = psnr(kodim_rgb, bf16.decode(data))
        n32, n16 = len(data), len(bf16.encode(kodim_rgb, quality=quality).data)

        assert abs(db16 - db32) < 0.1, f"q={quality}: fp32 {db32:.3f} dB, bf16 {db16:.3f} dB"
        assert abs(n16 - n32) / n32 < 0.01, f"q={quality}: fp32 {n32} B, bf16 {n16} B"
        assert np.abs(bf16.decode(data).astype(int) - fp32.decode(data).astype(int)).max() <= 4


def test_a_grown_synthesis_starts_as_the_identity_and_keeps_the_plain_layers_names(tiny_codec):
    from shared.network import ResidualBlock, grow_synthesis

    plain = tiny_codec.model
    grown = grow_synthesis(plain, 2).eval()
    y = torch.randn(1, plain.config.M, 3, 4)

    before, after = plain.state_dict(), grown.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # every old tensor, same name
    assert sorted({k.split(".")[1] for k in set(after) - set(before)}) == ["r1", "r3"]
    assert sum(isinstance(m, ResidualBlock) for m in grown.g_s.modules()) == 4  # 2 per stage
    assert grown.config.synthesis_blocks == 2
    with torch.no_grad():
        assert float((grown.g_s(y) - plain.g_s(y)).abs().max()) == 0.0
    with pytest.raises(ValueError, match="must be larger"):
        grow_synthesis(grown, 2)


def test_the_refined_synthesis_has_an_inference_form_that_computes_it(tiny_refined_codec):
    model = tiny_refined_codec.model
    y = torch.randn(2, model.config.M, 4, 5)

    with torch.inference_mode():
        ref = model.g_s(y)
        fp32 = InferenceTransform(model.g_s, torch.float32)(y)
        plain_part = y
        for name, layer in model.g_s.named_children():
            plain_part = plain_part if name.startswith("r") else layer(plain_part)  # skip the blocks

    assert fp32.shape == ref.shape == (2, 3, 64, 80)
    assert float((fp32 - ref).abs().max()) < 1e-5
    assert float((plain_part - ref).abs().max()) > 1e-3  # the randomised blocks do change the picture
