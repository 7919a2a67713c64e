"""The context model (shared/context.py) and its streams (format version 4): the coder walks the
same steps on both sides, an untrained context model codes as the hyperprior alone, and every
table-deciding number is the same under any thread count and transform precision."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from shared import bitstream as bs
from shared.context import AnchorConv, ContextModel, checkerboard
from shared.errors import UnsupportedVersion
from shared.network import NetworkConfig, VariableRateHyperprior, latent_extent
from tests.conftest import TINY_CONTEXT, TINY_NETWORK


def test_anchor_conv_reads_only_anchors_at_non_anchor_positions():
    torch.manual_seed(0)
    conv = AnchorConv(3, 5)
    x = torch.randn(1, 3, 8, 10)
    anchors = checkerboard(8, 10, dtype=torch.float32)
    # Change every non-anchor value: outputs at non-anchor positions must not move.
    moved = x + (1 - anchors) * torch.randn_like(x) * 10

    with torch.no_grad():
        a, b = conv(x), conv(moved)

    non_anchor = (1 - anchors).bool().expand_as(a)
    assert float((a - b)[non_anchor].abs().max()) == 0.0
    assert float((a - b)[~non_anchor].abs().max()) > 0.1  # anchors' outputs do see them


def test_anchor_conv_at_positions_is_the_convolution_there():
    torch.manual_seed(0)
    conv = AnchorConv(4, 6).double()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64) * checkerboard(7, 9, dtype=torch.float64)
    non_anchors = (1 - checkerboard(7, 9, dtype=torch.int64)).flatten().nonzero().squeeze(1)

    with torch.no_grad():
        full, sparse = conv(x), conv.at(x, non_anchors)

    assert sparse.shape == (2, 6, len(non_anchors)) == (2, 6, 31)
    assert float((sparse - full.flatten(2)[:, :, non_anchors]).abs().max()) < 1e-12


@pytest.mark.parametrize("anchors_known, blocks", [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_parameters_at_positions_are_the_full_parameters_there(anchors_known, blocks):
    torch.manual_seed(0)
    model = ContextModel(12, (4, 8), width=16, blocks=blocks).double()
    step = model.steps[1]
    for p in step.parameters():  # the head starts at zero: give every layer a part
        torch.nn.init.normal_(p, std=0.3)
    features = step.features(step.hyper(torch.randn(1, 25, 6, 5, dtype=torch.float64)),
                             torch.randn(1, 4, 6, 5, dtype=torch.float64))
    phase = checkerboard(6, 5, dtype=torch.int64) if not anchors_known else 1 - checkerboard(6, 5, dtype=torch.int64)
    at = phase.flatten().nonzero().squeeze(1)
    y_anchors = torch.randn(1, 8, 6, 5, dtype=torch.float64) * checkerboard(6, 5, dtype=torch.float64) if anchors_known else None

    with torch.no_grad():
        full = step.params(features, y_anchors)
        sparse = step.params(features, y_anchors, at)

    for f, s in zip(full, sparse):
        assert s.shape == (1, 8, 15)
        assert float((s - f.flatten(2)[:, :, at]).abs().max()) < 1e-12


def test_coder_tables_are_cut_to_their_lengths_and_rebuilt_with_the_model_tables():
    torch.manual_seed(0)
    model = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK, **TINY_CONTEXT)).eval()
    model.update(force=True)
    cdfs, lengths, offsets = model._cdfs()

    assert [len(c) for c in cdfs] == lengths and len(offsets) == len(lengths) == 64
    assert max(lengths) == model.gaussian_conditional._quantized_cdf.shape[1] > min(lengths)
    assert model._cdfs()[0] is cdfs  # cached
    model.gaussian_conditional.update_scale_table(torch.linspace(0.2, 8.0, 16), force=True)
    assert len(model._cdfs()[1]) == 16


def test_groups_must_cover_the_latent():
    with pytest.raises(ValueError, match="sum to M = 24"):
        ContextModel(24, (8, 8))


@pytest.mark.slow
def test_stream_round_trip_is_version_6_and_matches_the_direct_reconstruction(tiny_context_codec, sample_rgb):
    model = tiny_context_codec.model
    x = torch.from_numpy(sample_rgb).permute(2, 0, 1)[None].float() / 255
    from shared.network import pad_to_multiple

    y, z = model.analysis(pad_to_multiple(torch.cat([x, x.flip(-1)])))
    for q in (0.0, 0.5, 1.0):
        expected = model.quantize_latents(y, z, q)
        out = model.compress_latents(y, z, q)  # version 4: y and z apart
        assert torch.equal(model.decode_latents(out["strings"], out["shape"], q), expected)
        joint = model.compress_joint(y, z, q)  # versions 5 to 7: one string per image
        assert len(joint) == 2
        decoded = model.decode_joint(joint, out["shape"], q)
        assert decoded.shape == y.shape
        assert torch.equal(decoded, expected)
        assert len(joint[0]) < len(out["strings"][0][0]) + len(out["strings"][1][0])

    enc = tiny_context_codec.encode(sample_rgb, quality=0.6)
    assert enc.stream.version == bs.CONTEXT_VERSION == 7
    assert enc.data.startswith(b"\x98\xc4\x04LWIC\x07")
    assert tiny_context_codec.decode(enc.data).shape == (71, 97, 3)


def test_reduced_size_stream_is_version_7_with_the_coded_size(tiny_context_codec, sample_rgb):
    enc = tiny_context_codec.encode(sample_rgb, quality=0.6, scale=0.5)

    assert (enc.stream.version, enc.stream.coded_size) == (7, (36, 48))
    assert enc.data.startswith(b"\x9a\xc4\x04LWIC\x07")  # an array of 10 fields
    assert enc.stream.z_shape == (None, 1, 1)  # 36x48 pads to 64x64
    assert bs.loads(enc.data).coded_size == (36, 48)
    assert tiny_context_codec.decode(enc.data).shape == (71, 97, 3)


def test_a_zero_context_model_codes_exactly_as_the_hyperprior_alone(kodim_crop):
    torch.manual_seed(0)
    plain = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK)).eval()
    with_context = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK, **TINY_CONTEXT)).eval()
    missing, _ = with_context.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("context.") for k in missing)
    plain.update(force=True)
    with_context.update(force=True)
    x = torch.from_numpy(kodim_crop).permute(2, 0, 1)[None].float() / 255
    y, z = plain.analysis(x)

    for q in (0.0, 0.7):
        assert torch.equal(with_context.quantize_latents(y, z, q), plain.quantize_latents(y, z, q))
        assert with_context.estimate_bits(y, z, q) == pytest.approx(plain.estimate_bits(y, z, q), rel=1e-9)


def test_trained_context_changes_the_tables(tiny_context_codec, kodim_crop):
    """The fixture's context heads are random: bits must differ from the same model without them."""
    model = tiny_context_codec.model
    zeroed = VariableRateHyperprior(model.config).eval()
    zeroed.load_state_dict(model.state_dict())
    for step in zeroed.context.steps:
        torch.nn.init.zeros_(step.head.weight)
        torch.nn.init.zeros_(step.head.bias)
    x = torch.from_numpy(kodim_crop).permute(2, 0, 1)[None].float() / 255
    y, z = model.analysis(x)

    assert abs(model.estimate_bits(y, z, 0.5) - zeroed.estimate_bits(y, z, 0.5)) > 8


def _under_threads(n: int, call, *args):
    torch.set_num_threads(n)
    return call(*args)


@pytest.mark.slow
@pytest.mark.parametrize("encoder_precision", ["fp32", "bf16"])
def test_latents_decode_the_same_under_any_thread_count_and_precision(tiny_context_codec, kodim_crop,
                                                                       encoder_precision, restore_threads):
    """What decides each step's table (h_s, the context networks, in float64 on the CPU) gives the
    same numbers on both sides: a stream from either precision decodes, under 1, 2 and 3 threads
    and in either precision, to exactly the latents the encoder quantised. The 100x170 picture
    pads to 128x192, so the stream leaves out a row and a column of positions."""
    from shared.codec import Codec

    picture = np.ascontiguousarray(kodim_crop[:100, :170])
    extent = latent_extent(100, 170)
    codec = tiny_context_codec
    encoder = Codec(codec.model, codec.name, codec.weights, precision=encoder_precision)
    enc = encoder.encode(picture, quality=0.4)
    y, z = encoder._analysis(picture)
    expected = codec.model.quantize_latents(y, z, enc.stream.quality, extent)
    assert enc.stream.version == 7 and extent == (7, 11) and y.shape[-2:] == (8, 12)

    for n in (1, 2, 3):
        decoded = _under_threads(n, codec.model.decode_joint, list(enc.stream.strings), enc.stream.z_shape[1:],
                                 enc.stream.quality, extent)
        assert torch.equal(decoded, expected)
    streams = [_under_threads(n, encoder.encode, picture, 0.4).data for n in (1, 2, 3)]
    assert streams[0] == streams[1] == streams[2] == enc.data
    pixels = [_under_threads(n, codec.decode, enc.data) for n in (1, 2, 3)]
    assert all(np.array_equal(pixels[0], p) for p in pixels[1:])


@pytest.mark.parametrize("version", bs.CONTEXT_VERSIONS)
def test_a_context_stream_for_a_model_without_context_is_refused(tiny_codec, tiny_stream, version):
    stream = tiny_stream.stream
    strings = stream.strings if version == 4 else (stream.strings[0],)
    forged = dataclasses.replace(stream, version=version, strings=strings).to_bytes()

    with pytest.raises(UnsupportedVersion, match="codes only version 1-3 streams") as info:
        tiny_codec.decode(forged)
    assert info.value.status == 400


def test_an_older_format_stream_for_a_context_model_is_refused(tiny_context_codec, sample_rgb):
    """A version 2 stream naming a context model cannot have come from its encoder: a clear 4xx
    error, never pixels decoded with the wrong tables."""
    enc = tiny_context_codec.encode(sample_rgb, quality=0.5)
    config = tiny_context_codec.model.config
    forged = dataclasses.replace(enc.stream, version=bs.VERSION, model=tiny_context_codec.name,
                                 strings=enc.stream.strings * 2,
                                 y_shape=(config.M, *enc.stream.y_shape[1:]),
                                 z_shape=(config.N, *enc.stream.z_shape[1:])).to_bytes()

    with pytest.raises(UnsupportedVersion, match="lw-tiny-context@.*codes only version 4-7 streams") as info:
        tiny_context_codec.decode(forged)
    assert info.value.status == 400


@pytest.mark.slow
def test_the_budget_search_works_on_context_streams(tiny_context_codec, sample_rgb):
    top = tiny_context_codec.encode(sample_rgb, quality=1.0).nbytes
    low = tiny_context_codec.encode(sample_rgb, quality=0.0).nbytes
    budget = (top + low) // 2

    enc = tiny_context_codec.encode(sample_rgb, max_bytes=budget)

    assert low <= enc.nbytes <= budget
    assert enc.stream.version == bs.CONTEXT_VERSION
    assert tiny_context_codec.decode(enc.data).shape == (71, 97, 3)


@pytest.mark.parametrize("groups, checkerboard", [((24,), True), ((8, 16), False)])
def test_other_variants_code_what_they_decode(groups, checkerboard, kodim_crop):
    """One group with the checkerboard (He et al. 2021) and channel groups without it (Minnen &
    Singh 2020): steps are 2 x groups or 1 x groups, and decoding walks the same steps."""
    torch.manual_seed(3)
    model = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK, context_groups=groups, context_width=16,
                                                 context_checkerboard=checkerboard)).eval()
    for step in model.context.steps:
        torch.nn.init.normal_(step.head.weight, std=0.5)
    model.update(force=True)
    x = torch.from_numpy(kodim_crop).permute(2, 0, 1)[None].float() / 255
    y, z = model.analysis(x)
    calls = []
    model._context_walk(model._hat_latents(y, z, 0.5)[0], torch.tensor([0.5], dtype=torch.float64), y,
                        lambda symbols, indexes: calls.append(len(indexes)) or symbols)

    out = model.compress_latents(y, z, 0.5)

    assert len(calls) == len(groups) * (2 if checkerboard else 1)
    assert sum(calls) == y.numel()
    assert torch.equal(model.decode_latents(out["strings"], out["shape"], 0.5), model.quantize_latents(y, z, 0.5))
    assert (model.context.steps[0].anchors is not None) == checkerboard


def test_blocks_grown_onto_a_trained_context_model_code_as_before_until_they_train(tiny_context_codec, kodim_crop):
    """A context model deepened by residual blocks (``context_blocks``) loads the trained weights
    and, its new blocks starting as the identity, gives the same tables, so the same stream; once
    a block's weights move, the tables move."""
    from dataclasses import replace

    trained = tiny_context_codec.model
    grown = VariableRateHyperprior(replace(trained.config, context_blocks=1)).eval()
    missing, unexpected = grown.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and missing and all(".spatial.0." in k or ".pointwise.0." in k for k in missing)
    assert len(missing) == 8 * len(trained.config.context_groups)  # 4 convolutions x (weight, bias) per group
    grown.update(force=True)
    x = torch.from_numpy(kodim_crop).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = trained.g_a(x)
        z = trained.h_a(y)
        before = trained.estimate_bits(y, z, 0.5)
        assert grown.estimate_bits(y, z, 0.5) == before
        for step in grown.context.steps:
            torch.nn.init.normal_(step.pointwise[0].back.weight, std=0.05)
            torch.nn.init.normal_(step.spatial[0].back.weight, std=0.05)
        assert grown.estimate_bits(y, z, 0.5) != before


def test_stacked_hyper_projection_matches_each_group_own():
    """``hyper_features`` (one convolution for all groups) gives each group what its own ``hyper``
    layer gives, at the shipped model's shape (M 192, five groups of width 128) in float64."""
    torch.manual_seed(0)
    model = ContextModel(192).double()
    hyper = torch.randn(1, 2 * 192 + 1, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        stacked = model.hyper_features(hyper)
        own = [step.hyper(hyper) for step in model.steps]
    assert [t.shape for t in stacked] == [(1, 128, 32, 48)] * 5
    for a, b in zip(stacked, own):
        assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 70), (17, 33), (63, 65), (64, 64)])
def test_version_7_round_trips_any_size(tiny_context_codec, height, width):
    """Down to one pixel, where a single latent position holds the picture and some checkerboard
    steps code nothing at all: the decoder gets what the encoder predicted."""
    rng = np.random.default_rng(height * 100 + width)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    enc = tiny_context_codec.encode(rgb, quality=0.8)
    with torch.inference_mode():
        y, z = tiny_context_codec._analysis(rgb)
        expected = tiny_context_codec._reconstruct(y, z, 0.8, rgb.shape)

    assert enc.stream.version == 7
    assert np.array_equal(tiny_context_codec.decode(enc.data), expected)
    assert expected.shape == (height, width, 3)
