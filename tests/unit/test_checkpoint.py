"""Exported model files (shared/checkpoint.py): loading re-hashes the weights and refuses edited,
renamed, foreign or unsafe files with a CheckpointError."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from shared.checkpoint import find_model, load_model, weights_hash
from shared.errors import CheckpointError, CheckpointHashMismatch, CheckpointNotFound


@pytest.fixture
def tiny_file(tiny_models_dir, tmp_path) -> Path:
    """A private copy of the tiny model file, free to damage."""
    from shared.checkpoint import find_model

    original = find_model("lw-tiny", tiny_models_dir)
    return Path(shutil.copy(original, tmp_path / original.name))


class _RunsCodeWhenUnpickled:
    """A pickle that would create ``marker`` if torch.load executed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_model_returns_the_model_and_its_description(tiny_file):
    model, meta = load_model(tiny_file)

    assert meta["format"] == "latentwire-model"
    assert meta["version"] == 1
    assert meta["name"] == "lw-tiny"
    assert re.fullmatch(r"[0-9a-f]{16}", meta["weights"])
    assert tiny_file.name == f"lw-tiny-{meta['weights'][:8]}.pt"
    assert weights_hash(model.state_dict()) == meta["weights"]
    assert (meta["network"]["N"], meta["network"]["M"]) == (16, 24)
    assert meta["path"] == str(tiny_file)
    assert "state_dict" not in meta
    assert not model.training


def test_load_by_name_finds_the_hashed_file(tiny_file):
    assert find_model("lw-tiny", tiny_file.parent) == tiny_file
    assert load_model("lw-tiny", tiny_file.parent)[1]["name"] == "lw-tiny"


def test_one_changed_weight_fails_the_hash(tiny_file):
    ckpt = torch.load(tiny_file, weights_only=True)
    ckpt["state_dict"]["g_a.0.weight"][0, 0, 0, 0] += 1e-3
    torch.save(ckpt, tiny_file)  # same name, same claimed hash, other weights

    with pytest.raises(CheckpointHashMismatch, match=ckpt["weights"]) as info:
        load_model(tiny_file)
    assert info.value.status == 500
    with pytest.raises(CheckpointHashMismatch):
        load_model("lw-tiny", tiny_file.parent)


def test_a_file_renamed_to_another_hash_prefix_fails(tiny_file):
    renamed = tiny_file.rename(tiny_file.with_name("lw-tiny-00000000.pt"))

    with pytest.raises(CheckpointHashMismatch):
        load_model(renamed)
    with pytest.raises(CheckpointHashMismatch):
        load_model("lw-tiny", renamed.parent)


def test_a_claimed_hash_that_is_missing_fails_the_hash(tiny_file):
    ckpt = torch.load(tiny_file, weights_only=True)
    del ckpt["weights"]
    torch.save(ckpt, tiny_file)

    with pytest.raises(CheckpointHashMismatch):
        load_model(tiny_file)


@pytest.mark.parametrize(
    "payload",
    [
        {"weights": torch.zeros(3)},  # some other project's tensors
        {"network": {"N": 16}, "state_dict": {}},  # a training checkpoint, never exported
        {"format": "something-else", "version": 1, "network": {}, "state_dict": {}},
        [torch.zeros(3)],
    ],
    ids=["foreign-dict", "training-checkpoint", "other-format", "list"],
)
def test_a_pt_file_that_is_not_a_latentwire_model(tmp_path, payload):
    path = tmp_path / "lw-tiny-12345678.pt"
    torch.save(payload, path)

    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert type(info.value) is CheckpointError


def test_a_file_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a zip archive" * 10)

    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_model(path)


def test_a_pickle_that_would_run_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCodeWhenUnpickled(marker), "network": {}}, path)

    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_model(path)
    assert not marker.exists()


def test_an_unknown_name_lists_the_available_models(tiny_file):
    with pytest.raises(CheckpointNotFound, match=r"no model named 'lw-huge'.*available: lw-tiny$"):
        find_model("lw-huge", tiny_file.parent)


def test_an_empty_models_dir_says_none_are_available(tmp_path):
    with pytest.raises(CheckpointNotFound, match="available: none"):
        find_model("lw-tiny", tmp_path)


def test_a_missing_file_path_is_not_found(tmp_path):
    with pytest.raises(CheckpointNotFound):
        load_model(tmp_path / "lw-tiny-12345678.pt")


def test_two_files_for_one_name_are_ambiguous(tiny_file):
    shutil.copy(tiny_file, tiny_file.with_name("lw-tiny-abcdef12.pt"))

    with pytest.raises(CheckpointError, match="several files"):
        find_model("lw-tiny", tiny_file.parent)


def test_a_gpu_runs_split_weights_export_to_the_same_model(tiny_file, tmp_path):
    """A lent GPU returns files under 16 MiB: ``export`` joins meta.pt + weights_part*.pt."""
    from shared.checkpoint import export_model
    from shared.tools.device.train_on_device import split_state_dict

    ckpt = torch.load(tiny_file, weights_only=True)
    run = tmp_path / "gpu-run"
    run.mkdir()
    split_state_dict(ckpt["state_dict"], run, max_bytes=64 << 10)
    torch.save({k: ckpt[k] for k in ("network", "train_config", "step")}, run / "meta.pt")
    parts = sorted(run.glob("weights_part*.pt"))
    assert len(parts) >= 3  # the tiny model's 64 KiB parts: really split
    for p in parts:  # each part within the limit, unless it is one tensor larger than the limit
        part = torch.load(p, weights_only=True)
        assert len(part) == 1 or sum(t.numel() * t.element_size() for t in part.values()) <= 64 << 10

    joined = export_model(run, "lw-tiny", tmp_path / "out")

    assert joined.name == tiny_file.name  # same weights, same hash prefix
    model, meta = load_model(joined)
    assert meta["weights"] == weights_hash(ckpt["state_dict"])


def test_a_gpu_run_folder_without_weights_is_not_found(tmp_path):
    from shared.checkpoint import export_model

    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointNotFound, match="weights_part"):
        export_model(tmp_path / "run", "lw-tiny", tmp_path / "out")


def test_half_synthesis_export_halves_the_decoder_and_keeps_every_stream(tiny_file, tmp_path):
    """``latentwire export --half-synthesis``: g_s in float16 on disk, widened on load; the sender's
    side is untouched, so streams are byte-identical and only the pixels move, by little."""
    import numpy as np

    from shared.checkpoint import export_model
    from shared.codec import Codec
    from shared.images import psnr

    half = export_model(tiny_file, "lw-tiny", tmp_path / "half", half_synthesis=True)
    stored = torch.load(half, weights_only=True)["state_dict"]
    g_s = {k: v for k, v in stored.items() if k.startswith("g_s.") and v.is_floating_point()}
    assert g_s and all(v.dtype == torch.float16 for v in g_s.values())
    assert all(v.dtype != torch.float16 for k, v in stored.items() if not k.startswith("g_s."))
    assert half.stat().st_size < tiny_file.stat().st_size
    assert half.name != tiny_file.name  # the rounded weights hash differently: a model of its own

    full, small = Codec.load(tiny_file), Codec.load(half)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for quality in (0.0, 0.5, 1.0):
        a, b = full.encode(rgb, quality=quality), small.encode(rgb, quality=quality)
        assert a.stream.strings == b.stream.strings and a.nbytes == b.nbytes
        assert psnr(full.decode(a.data), small.decode(b.data)) > 35  # float16 rounding of g_s only


def test_metadata_written_beside_the_weights_keeps_the_hash_and_reaches_the_codec(tiny_file):
    from shared.checkpoint import write_metadata
    from shared.codec import Codec
    from shared.rate_control import RateCurve

    curve = RateCurve((0.0, 0.5, 1.0), (0.1, 0.4, 1.2))
    write_metadata(tiny_file, rate_curve=curve.to_meta())

    model, meta = load_model(tiny_file)
    assert meta["weights"].startswith(tiny_file.stem[-8:]) and meta["rate_curve"] == curve.to_meta()
    assert Codec.load(tiny_file).rate_curve == curve
    with pytest.raises(CheckpointError, match="touches its weights"):
        write_metadata(tiny_file, state_dict={})
    assert load_model(tiny_file)[1]["rate_curve"] == curve.to_meta()


def test_a_finer_scale_table_keeps_every_pixel(tiny_models_dir, sample_rgb, tmp_path):
    """``latentwire export --scale-levels 128``: each latent's scale rounds up to a closer table
    entry, so the streams change (a model of its own) and every decoded pixel stays."""
    import numpy as np

    from shared.checkpoint import export_model
    from shared.checkpoint import find_model
    from shared.codec import Codec

    source = find_model("lw-tiny-context", tiny_models_dir)
    fine = export_model(source, "lw-tiny-context", tmp_path / "fine", scale_levels=128)
    coarse = Codec.load(source, precision="fp32")
    finer = Codec.load(fine, precision="fp32")
    rgb = sample_rgb

    assert finer.model.config.scale_levels == 128 and coarse.model.config.scale_levels == 64
    assert finer.model.gaussian_conditional.scale_table.numel() == 128
    assert finer.weights != coarse.weights
    for q in (0.2, 0.8):
        a, b = coarse.encode(rgb, quality=q), finer.encode(rgb, quality=q)
        assert a.stream.strings != b.stream.strings
        assert np.array_equal(coarse.decode(a.data), finer.decode(b.data))


def test_synthesis_from_another_run_of_the_same_encoder_replaces_g_s_alone(tiny_file, tmp_path):
    """``latentwire export --synthesis-from``: the source's weights with another checkpoint's g_s
    (a decoder-only run beside an entropy run); refused when that g_s was trained on another g_a."""
    from shared.checkpoint import export_model

    source = torch.load(tiny_file, weights_only=True)
    decoder_run = {**source, "state_dict": {k: (v + 0.01 if k.startswith("g_s.") and v.is_floating_point() else v)
                                            for k, v in source["state_dict"].items()}}
    torch.save(decoder_run, tmp_path / "dec.pt")

    merged = export_model(tiny_file, "lw-tiny", tmp_path / "out", synthesis_from=tmp_path / "dec.pt")
    state = torch.load(merged, weights_only=True)["state_dict"]
    for key, value in state.items():
        expected = decoder_run["state_dict"][key] if key.startswith("g_s.") else source["state_dict"][key]
        assert torch.equal(value, expected), key
    assert any(not torch.equal(state[k], source["state_dict"][k]) for k in state if k.startswith("g_s."))

    other_encoder = {**source, "state_dict": {k: (v * 1.5 if k == "g_a.0.weight" else v)
                                              for k, v in source["state_dict"].items()}}
    torch.save(other_encoder, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="another analysis transform \\(g_a.0.weight differs\\)"):
        export_model(tiny_file, "lw-tiny", tmp_path / "no", synthesis_from=tmp_path / "other.pt")
    grown = {**source, "network": {**source["network"], "synthesis_blocks": 2}}
    torch.save(grown, tmp_path / "grown.pt")
    with pytest.raises(CheckpointError, match="another shape"):
        export_model(tiny_file, "lw-tiny", tmp_path / "no", synthesis_from=tmp_path / "grown.pt")


def test_half_analysis_export_halves_the_encoder_and_streams_move_by_little(tiny_file, tmp_path, sample_rgb):
    """``latentwire export --half-analysis``: g_a in float16 on disk; the latents move by its
    rounding, so a stream's bytes and pixels move by little, and whatever it sends decodes alike."""
    from shared.checkpoint import export_model
    from shared.codec import Codec
    from shared.images import psnr

    half = export_model(tiny_file, "lw-tiny", tmp_path / "half", half_analysis=True, half_synthesis=True)
    stored = torch.load(half, weights_only=True)["state_dict"]
    halved = {k for k, v in stored.items() if v.dtype == torch.float16}
    assert halved == {k for k, v in stored.items() if k.startswith(("g_a.", "g_s.")) and v.is_floating_point()}
    assert any(k.startswith("g_a.") for k in halved)
    assert half.stat().st_size < tiny_file.stat().st_size

    full, small = Codec.load(tiny_file, precision="fp32"), Codec.load(half, precision="fp32")
    for quality in (0.0, 0.5, 1.0):
        a, b = full.encode(sample_rgb, quality=quality), small.encode(sample_rgb, quality=quality)
        assert abs(b.nbytes - a.nbytes) <= max(8, 0.05 * a.nbytes)
        assert psnr(full.decode(a.data), small.decode(b.data)) > 35
