"""Determinism (see DEVICE POLICY in shared/codec.py): the same image gives byte-identical
streams across runs and CPU thread counts, and a stream decodes to identical pixels under any
thread count, for the tiny model and the shipped one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CODECS = ["tiny_codec", "shipped_codec"]


def _under_threads(n: int, call, *args):
    torch.set_num_threads(n)
    return call(*args)


@pytest.mark.parametrize("codec_fixture", CODECS)
def test_encoding_twice_gives_identical_bytes(request, codec_fixture, kodim_crop):
    codec = request.getfixturevalue(codec_fixture)

    first = codec.encode(kodim_crop, quality=0.5).data
    second = codec.encode(kodim_crop, quality=0.5).data

    assert first == second


@pytest.mark.parametrize("codec_fixture", CODECS)
def test_encoding_is_identical_under_1_and_2_threads(request, codec_fixture, kodim_crop, restore_threads):
    codec = request.getfixturevalue(codec_fixture)

    one = _under_threads(1, codec.encode, kodim_crop, 0.5).data
    two = _under_threads(2, codec.encode, kodim_crop, 0.5).data

    assert len(one) == len(two)
    assert one == two


@pytest.mark.parametrize("codec_fixture", CODECS)
def test_decoding_is_identical_under_1_and_2_threads(request, codec_fixture, kodim_crop, restore_threads):
    codec = request.getfixturevalue(codec_fixture)
    data = codec.encode(kodim_crop, quality=0.5).data

    one = _under_threads(1, codec.decode, data)
    two = _under_threads(2, codec.decode, data)

    assert one.shape == two.shape == (128, 192, 3)
    assert int(np.count_nonzero(one != two)) == 0

