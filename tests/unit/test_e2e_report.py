"""``latentwire bench e2e``'s printed table: the services' cost against the codec doing the same work."""

from __future__ import annotations

import pytest

from shared.tools.e2e_bench import print_report


def _result(preview: bool) -> dict:
    e2e, codec, same = 4.0, 7.0, 5.0
    return {
        "images": 60, "delivered": 60, "concurrency": 4, "quality": 0.5, "preview": preview,
        "e2e_images_per_s": e2e, "codec_images_per_s": codec, "services_cost": 1 - e2e / codec,
        "same_work_images_per_s": same, "services_cost_same_work": 1 - e2e / same,
        "p50_ms": 1000.0, "p99_ms": 1500.0, "mean_psnr": 31.0, "wire_bytes": 8700.0,
        "original_bytes": 170000.0, "jpeg_bytes_same_psnr": 11700.0, "avif_bytes_same_psnr": 6400.0,
    }


@pytest.mark.parametrize("preview", [True, False])
def test_report_states_both_costs_with_previews_and_one_without(capsys, preview):
    print_report(_result(preview))
    out = capsys.readouterr().out

    assert "services cost vs codec-only" in out and " 43 %" in out  # 1 - 4/7
    same_work = [line for line in out.splitlines() if line.startswith("services cost vs that same codec work")]
    if preview:
        assert len(same_work) == 1 and same_work[0].endswith("20 %")  # 1 - 4/5
        assert "encode+2 decodes" in out
    else:
        assert same_work == [] and "encode+2 decodes" not in out
    lines = out.strip("\n").splitlines()
    assert lines[0].startswith("latentwire bench e2e") and all(len(line) <= 50 for line in lines[1:])  # columns
