"""``latentwire demo --once``, the README's main job, on the shipped models: every sample arrives,
and each PSNR says what it is measured against."""

from __future__ import annotations

import re

from shared.tools.cli import main
from shared.tools.launcher import free_port


def test_demo_delivers_every_sample_and_names_what_each_psnr_is_against(tmp_path, capsys):
    rc = main(["demo", "--once", "--work-dir", str(tmp_path / "demo"), "--receiver-port", str(free_port()),
               "--sender-port", str(free_port())])
    out = capsys.readouterr().out

    assert rc == 0, out
    assert re.search(r"^image\s.*\sPSNR dB vs upload$", out, re.M), out
    rows = re.findall(r"^(\S.*?)\s+(\d+)x(\d+)\s+(\d\.\d\d)\s+(\d+)\s+(\d+)\s+(\d\.\d{3})\s+([\d.]+)x\s+([\d.]+)$",
                      out, re.M)
    assert len(rows) == 7, out  # five samples, then one noisy sample in each mode
    for row in rows:
        file_bytes, wire_bytes, psnr = int(row[4]), int(row[5]), float(row[8])
        assert 0 < wire_bytes < file_bytes and 15 < psnr < 60, row
    vs_clean = dict(re.findall(r"^  mode (standard|denoise)\s+\d+ bytes on the wire,\s+([\d.]+) dB vs clean$", out, re.M))
    assert set(vs_clean) == {"standard", "denoise"}, out
    assert float(vs_clean["denoise"]) > float(vs_clean["standard"]), out  # the point of mode=denoise
    assert "all 7 images delivered" in out
