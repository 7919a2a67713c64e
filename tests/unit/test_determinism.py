"""Determinism (see DEVICE POLICY in shared/codec.py): the same image gives byte-identical
streams across runs and CPU thread counts, and a stream decodes to identical pixels under any
thread count, for the tiny model and the shipped one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CODECS = ["tiny_codec", pytest.param("shipped_codec", marks=pytest.mark.slow)]


def _under_threads(n: int, call, *args):
    torch.set_num_threads(n)
    return call(*args)


@pytest.mark.parametrize("codec_fixture", CODECS)
def test_encoding_twice_gives_identical_bytes(request, codec_fixture, kodim_crop):
    codec = request.getfixturevalue(codec_fixture)

    first = codec.encode(kodim_crop, quality=0.5).data
    second = codec.encode(kodim_crop, quality=0.5).data

    assert first == second


def _with_precision(codec, precision: str):
    """The same loaded model coded in another arithmetic (shares the weights)."""
    from shared.codec import Codec

    return Codec(codec.model, codec.name, codec.weights, precision=precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("codec_fixture", CODECS)
def test_encoding_is_identical_under_1_2_and_3_threads(request, codec_fixture, precision, kodim_crop,
                                                       restore_threads):
    codec = _with_precision(request.getfixturevalue(codec_fixture), precision)

    streams = [_under_threads(n, codec.encode, kodim_crop, 0.5).data for n in (1, 2, 3)]

    assert len(streams[0]) == len(streams[1]) == len(streams[2])
    assert streams[0] == streams[1] == streams[2]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("codec_fixture", [*CODECS, "tiny_refined_codec"])  # the last: g_s with residual blocks
def test_decoding_is_identical_under_1_2_and_3_threads(request, codec_fixture, precision, kodim_rgb,
                                                       restore_threads):
    # 3 threads is the case that once broke: oneDNN's transposed convolutions split their
    # reductions there (lw-vr-hyperprior-38e7d9f7's own ConvTranspose2d g_s changed 3 values of
    # this image),
    # so the decoder now runs them as SubpixelDeconv convolutions.
    codec = _with_precision(request.getfixturevalue(codec_fixture), precision)
    data = codec.encode(kodim_rgb, quality=0.5).data

    one, two, three = (_under_threads(n, codec.decode, data) for n in (1, 2, 3))

    assert one.shape == two.shape == three.shape == (256, 384, 3)
    assert int(np.count_nonzero(one != two)) == 0
    assert int(np.count_nonzero(one != three)) == 0
