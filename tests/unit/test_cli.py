"""``latentwire encode`` / ``decode`` on files: sizes, model routing, errors as exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.codec import Codec
from shared.images import load_image
from shared.tools.cli import main
from tests.conftest import DATA, TINY_DENOISE_MODEL, TINY_MODEL


def test_encode_then_decode_restores_the_size(tmp_path, tiny_models_dir, capsys):
    src = DATA / "crop_97x71.png"
    lw, png = tmp_path / "a.lw", tmp_path / "a.png"
    assert main(["encode", str(src), "-o", str(lw), "--quality", "0.7", "--model", TINY_MODEL,
                 "--models-dir", str(tiny_models_dir)]) == 0
    expected = Codec.load(TINY_MODEL, tiny_models_dir).encode(load_image(src).rgb, quality=0.7).data
    assert lw.read_bytes() == expected  # the file is exactly the stream the sender would send
    assert main(["decode", str(lw), "-o", str(png), "--models-dir", str(tiny_models_dir)]) == 0
    with Image.open(png) as im:
        assert im.size == (97, 71)


@pytest.mark.slow
def test_encode_with_a_denoising_model_reports_the_noise_estimate(tmp_path, tiny_models_dir, capsys):
    src = DATA / "crop_97x71.png"
    lw = tmp_path / "n.lw"
    assert main(["encode", str(src), "-o", str(lw), "--quality", "0.3", "--model", TINY_DENOISE_MODEL,
                 "--models-dir", str(tiny_models_dir)]) == 0
    enc = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir).encode(load_image(src).rgb, quality=0.3)
    assert lw.read_bytes() == enc.data
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"noise estimate {enc.noise:.1f} grey levels (rms); coded the model's clean reconstruction"
    assert main(["encode", str(src), "-o", str(lw), "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # a model trained on clean photos: no estimate


@pytest.mark.slow
def test_a_budget_below_the_full_sizes_lowest_rate_is_coded_smaller_and_decodes_full_size(tmp_path, tiny_models_dir,
                                                                                         capsys):
    src = DATA / "crop_97x71.png"
    lw, png = tmp_path / "b.lw", tmp_path / "b.png"
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    budget = codec.encode(load_image(src).rgb, quality=0.0).nbytes - 1
    assert main(["encode", str(src), "-o", str(lw), "--max-bytes", str(budget), "--model", TINY_MODEL,
                 "--models-dir", str(tiny_models_dir)]) == 0
    enc = codec.encode(load_image(src).rgb, max_bytes=budget)
    assert lw.read_bytes() == enc.data and enc.nbytes <= budget
    h, w = enc.stream.coded_size
    assert capsys.readouterr().out.splitlines()[1] == (
        f"coded at {w}x{h} to fit the budget (format version 3); decodes to 97x71")
    assert main(["decode", str(lw), "-o", str(png), "--models-dir", str(tiny_models_dir)]) == 0
    with Image.open(png) as im:
        assert im.size == (97, 71)


def _decode_without_naming_the_model(codec, rgb, lw: Path, models_dir: Path) -> None:
    """``latentwire decode`` of ``codec``'s stream with no --model gives ``codec``'s own pixels."""
    lw.write_bytes(codec.encode(rgb, quality=0.4).data)
    assert main(["decode", str(lw), "--models-dir", str(models_dir)]) == 0
    with Image.open(lw.with_suffix(".png")) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), codec.decode(lw.read_bytes()))


def test_decode_uses_the_model_the_stream_names(tmp_path, tiny_models_dir, sample_rgb):
    _decode_without_naming_the_model(Codec.load(TINY_DENOISE_MODEL, tiny_models_dir), sample_rgb,
                                     tmp_path / "d.lw", tiny_models_dir)


def test_decode_finds_a_version_6_streams_model_by_its_weights(tmp_path, tiny_models_dir, sample_rgb, capsys):
    from tests.conftest import TINY_CONTEXT_MODEL

    context = Codec.load(TINY_CONTEXT_MODEL, tiny_models_dir)
    lw = tmp_path / "c.lw"
    _decode_without_naming_the_model(context, sample_rgb, lw, tiny_models_dir)
    capsys.readouterr()
    assert main(["decode", str(lw), "--models-dir", str(tmp_path)]) == 2  # no model with those weights here
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no model with weights {context.weights}" in err[0]


def test_errors_are_one_line_and_exit_code_2(tmp_path, tiny_models_dir, capsys):
    lw = tmp_path / "a.lw"
    lw.write_bytes(Codec.load(TINY_DENOISE_MODEL, tiny_models_dir).encode(np.zeros((8, 8, 3), np.uint8),
                                                                          quality=0.5).data)
    # Decoding with the other model is refused with both names.
    assert main(["decode", str(lw), "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir)]) == 2
    err = capsys.readouterr().err
    assert "ModelMismatch" in err and TINY_MODEL in err and TINY_DENOISE_MODEL in err

    junk = tmp_path / "junk.lw"
    junk.write_bytes(b"not a stream")
    assert main(["decode", str(junk), "--models-dir", str(tiny_models_dir)]) == 2
    assert capsys.readouterr().err.startswith("latentwire decode: ")

    assert main(["encode", str(DATA / "crop_97x71.png"), "--max-bytes", "10", "--model", TINY_MODEL,
                 "--models-dir", str(tiny_models_dir)]) == 2
    assert "BudgetTooSmall" in capsys.readouterr().err


def test_help_is_plain_text_everywhere():
    """No reStructuredText marks from the docstrings the descriptions come from, in any --help."""
    import argparse

    from shared.tools.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    texts = {"latentwire": parser.format_help(), **{name: p.format_help() for name, p in commands.choices.items()}}
    assert len(texts) >= 12 and "receiver" in texts and "eval" in texts
    assert {name: [line for line in text.splitlines() if "``" in line] for name, text in texts.items()
            if "``" in text} == {}
    assert "The latentwire command line" in texts["latentwire"]
    assert "latentwire eval DIR: measured rate-distortion" in " ".join(texts["eval"].split())
