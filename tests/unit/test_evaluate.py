"""``latentwire eval`` and the RD helpers: BD-rate on curves with known answers, and the command
end to end on two 64x64 crops with the tiny random model (outputs and their keys)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from shared.tools.rd import Curve, bd_psnr, bd_rate, load_curves, psnr_at_rate

ANCHOR = Curve("anchor", bpp=[0.2, 0.4, 0.8, 1.6, 3.2], psnr=[27.0, 30.5, 33.5, 36.0, 39.5])


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor, expected", [(0.8, -20.0), (1.0, 0.0), (1.5, 50.0)])
def test_bd_rate_of_a_rate_scaled_curve_is_the_scale(method, factor, expected):
    test = Curve("test", bpp=[b * factor for b in ANCHOR.bpp], psnr=list(ANCHOR.psnr))
    assert bd_rate(ANCHOR, test, method) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_psnr_of_a_shifted_curve_is_the_shift(method):
    test = Curve("test", bpp=list(ANCHOR.bpp), psnr=[p + 1.25 for p in ANCHOR.psnr])
    assert bd_psnr(ANCHOR, test, method) == pytest.approx(1.25, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_uses_only_the_overlap_and_ignores_point_order(method):
    # log(rate) linear in PSNR, which both fits reproduce exactly on any subset of points.
    def rate(p):
        return float(np.exp(0.2 * p - 7))

    anchor = Curve("anchor", bpp=[rate(p) for p in (27, 30, 33, 36, 39)], psnr=[27, 30, 33, 36, 39])
    test = Curve("test", bpp=[0.8 * rate(p) for p in (39, 45, 33, 42, 36)], psnr=[39, 45, 33, 42, 36])
    assert bd_rate(anchor, test, method) == pytest.approx(-20.0, abs=1e-9)
    far = Curve("far", bpp=[5.0, 6.0], psnr=[45.0, 47.0])
    assert bd_rate(anchor, far, method) is None


def test_psnr_at_rate_is_the_upper_envelope_interpolated_in_log_rate():
    # A denoiser's curve: PSNR peaks at 0.4 bpp and drops after (more bits go to the noise).
    curve = Curve("denoiser", bpp=[0.8, 0.1, 0.4, 0.2], psnr=[28.0, 25.0, 29.0, 27.0])
    assert psnr_at_rate(curve, 0.05) is None  # cheaper than its cheapest point
    assert psnr_at_rate(curve, 0.1) == pytest.approx(25.0)
    assert psnr_at_rate(curve, 0.2 * 2**0.5) == pytest.approx(28.0)  # halfway in log-rate
    assert psnr_at_rate(curve, 0.6) == pytest.approx(29.0)  # the 0.4 bpp point still counts
    assert psnr_at_rate(curve, 5.0) == pytest.approx(29.0)


def test_load_curves_reads_compressai_layout(tmp_path):
    entry = {"name": "ref", "description": "d", "results": {"bpp": [0.1, 0.5], "psnr-rgb": [28.0, 33.0]}}
    (tmp_path / "ref.json").write_text(json.dumps(entry))
    (tmp_path / "broken.json").write_text("{")
    curves = load_curves(tmp_path)
    assert [(c.name, c.bpp, c.psnr) for c in curves] == [("ref", [0.1, 0.5], [28.0, 33.0])]


def test_noise_is_seeded_by_image_name():
    from shared.tools.evaluate import add_noise

    clean = np.full((32, 32, 3), 128, np.uint8)
    a, b, c = add_noise(clean, 10.0, "a.png"), add_noise(clean, 10.0, "a.png"), add_noise(clean, 10.0, "b.png")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.std(a.astype(float) - 128) == pytest.approx(10.0, rel=0.1)


def test_ms_ssim_is_undefined_on_small_images():
    from shared.tools.evaluate import ms_ssim_rgb

    rgb = np.zeros((64, 64, 3), np.uint8)
    assert np.isnan(ms_ssim_rgb(rgb, rgb))
    big = np.random.default_rng(0).integers(0, 256, (168, 168, 3), dtype=np.uint8)
    assert ms_ssim_rgb(big, big) == pytest.approx(1.0)


@pytest.mark.slow
def test_eval_command_writes_results_csv_and_plot(tmp_path, tiny_models_dir, capsys):
    from shared.tools import SAMPLES
    from shared.tools.cli import main
    from tests.conftest import TINY_MODEL

    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(["kodim01_half.png", "kodim15_half.png"]):
        with Image.open(SAMPLES / name) as im:
            im.convert("RGB").crop((40 * i, 30, 40 * i + 64, 94)).save(images / f"crop{i}.png")
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "ref.json").write_text(json.dumps(
        {"name": "ref", "results": {"bpp": [0.5, 1, 2, 4, 8], "psnr-rgb": [5, 8, 11, 14, 17]}}))
    out = tmp_path / "out"

    rc = main(["eval", str(images), "--out", str(out), "--no-baselines", "--qualities", "0,1",
               "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir), "--reference-dir", str(refs)])

    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["ours"] == TINY_MODEL and report["images"] == 2
    entry = report["codecs"][TINY_MODEL]
    assert set(entry) == {"name", "description", "results"}
    res = entry["results"]
    assert set(res) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    assert all(len(v) == 2 for v in res.values())
    assert res["ms-ssim-rgb"] == [None, None]  # 64x64 is below MS-SSIM's minimum size
    assert res["bpp"][0] < res["bpp"][1]  # rate grows with quality
    assert set(report["bd_rate"]) >= {"metric", "method", "anchors", "ours_vs_reference"}
    assert report["bd_rate"]["anchors"] == {}  # no JPEG/AVIF measured
    assert "ref" in report["bd_rate"]["ours_vs_reference"]

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["codec", "setting", "image", "bpp", "psnr", "ms_ssim", "enc_ms", "dec_ms"]
    assert len(rows) == 2 * 2
    # bpp is the real container size: re-encode one point and compare.
    from shared.codec import Codec
    from shared.images import load_image

    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    nbytes = codec.encode(load_image(images / "crop0.png").rgb, quality=1.0).nbytes
    row = next(r for r in rows if r["image"] == "crop0.png" and r["setting"] == "q=1")
    assert float(row["bpp"]) == pytest.approx(nbytes * 8 / (64 * 64), abs=1e-5)

    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "BD-rate" in printed and TINY_MODEL in printed


def _one_crop(tmp_path, sample: str, box: tuple[int, int, int, int], name: str):
    """A folder ``tmp_path/images`` holding one crop of a sample image, saved as ``name``."""
    from shared.tools import SAMPLES

    images = tmp_path / "images"
    images.mkdir()
    with Image.open(SAMPLES / sample) as im:
        im.convert("RGB").crop(box).save(images / name)
    return images


@pytest.mark.slow
def test_eval_budgets_measure_the_byte_budget_mode(tmp_path, tiny_models_dir, capsys):
    from shared.codec import Codec
    from shared.images import load_image
    from shared.tools.cli import main
    from tests.conftest import TINY_MODEL

    images = _one_crop(tmp_path, "kodim15_half.png", (0, 0, 192, 128), "crop.png")
    out = tmp_path / "out"
    rc = main(["eval", str(images), "--out", str(out), "--no-baselines", "--qualities", "0,1", "--budgets",
               "0.1,0.5", "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir)])

    assert rc == 0
    entry = json.loads((out / "results.json").read_text())["codecs"][f"{TINY_MODEL}@budget"]
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    rgb = load_image(images / "crop.png").rgb
    for bpp, measured in zip((0.1, 0.5), entry["results"]["bpp"]):
        enc = codec.encode(rgb, max_bytes=int(bpp * 192 * 128 / 8))  # what the eval asked for
        assert measured == pytest.approx(enc.nbytes * 8 / (192 * 128)) and measured <= bpp
    assert main(["eval", str(images), "--no-baselines", "--budgets", "0,0.1", "--model", TINY_MODEL,
                 "--models-dir", str(tiny_models_dir)]) == 2
    assert "--budgets takes positive bpp values" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_noise_compares_denoisers_at_equal_rate(tmp_path, tiny_models_dir, capsys):
    from shared.tools.cli import main
    from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL

    images = _one_crop(tmp_path, "kodim01_half.png", (0, 0, 96, 80), "a.png")
    out = tmp_path / "out"

    rc = main(["eval", str(images), "--out", str(out), "--qualities", "0,0.5,1", "--noise", "25",
               "--model", TINY_MODEL, "--denoise-model", TINY_DENOISE_MODEL, "--models-dir", str(tiny_models_dir),
               "--grid", "a.png"])

    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["ours"] == TINY_DENOISE_MODEL and report["noise_sigma"] == 25
    assert set(report["codecs"]) == {TINY_MODEL, TINY_DENOISE_MODEL, "jpeg", "avif", "noisy-png", "nlm-avif"}
    assert 19.0 < report["noisy_input_psnr"] < 22.0  # sigma 25 on the 0-255 scale: 20.2 dB
    # The noise costs bits: the lossless noisy image is several bits per pixel.
    assert report["codecs"]["noisy-png"]["results"]["bpp"][0] > 4.0
    # Non-local means removes much of the noise before AVIF codes it.
    nlm = report["codecs"]["nlm-avif"]["results"]
    assert max(nlm["psnr-rgb"]) > report["noisy_input_psnr"] + 3.0
    cmp = report["vs_nlm_avif"]
    assert set(cmp) == set(report["codecs"]) - {"nlm-avif"}
    for entry in cmp.values():
        assert len(entry["points"]) == len(nlm["bpp"])
        assert entry["compared"] == sum(p["delta_db"] is not None for p in entry["points"])
    assert "nlm-avif" in report["bd_rate"]["anchors"]
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 3 * grid.height  # four panels side by side
    printed = capsys.readouterr().out
    assert "PSNR at equal or lower rate than nlm-avif" in printed and "noisy input PSNR" in printed


def test_eval_grid_needs_the_denoising_setup(tmp_path, tiny_models_dir, capsys):
    from shared.tools.cli import main
    from tests.conftest import TINY_MODEL

    rc = main(["eval", str(tmp_path), "--grid", "a.png", "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir)])
    assert rc == 2
    assert "--grid needs --noise, --denoise-model" in capsys.readouterr().err


def test_eval_and_bench_are_registered_subcommands():
    from shared.tools.cli import build_parser

    parser = build_parser()
    assert callable(parser.parse_args(["eval", "some/dir", "--limit", "2"]).func)
    args = parser.parse_args(["bench", "codec", "--runs", "5", "--threads", "1"])
    assert callable(args.func) and args.runs == 5
