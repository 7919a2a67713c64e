"""``latentwire bench link`` at unit speed: the tiny model, one link rate, a few seconds per run; the
table's numbers parse and hold together (delivered <= offered, latencies >= 0, p50 <= p95)."""

from __future__ import annotations

import re

from shared.tools.cli import main
from tests.conftest import TINY_MODEL

ROW = re.compile(r"^\s*(?P<kbps>\d+(?:\.\d+)?)\s+(?P<mode>auto|q=\d\.\d\d)\s+(?P<delivered>\d+)/(?P<offered>\d+)\s+"
                 r"(?P<p50>>?\d+\.\d+)\s+(?P<p95>>?\d+\.\d+)\s+(?P<first>>?\d+\.\d+)\s+(?P<last>>?\d+\.\d+)\s+"
                 r"(?P<psnr>\d+\.\d+)\s+(?P<bytes>\d+)\s+"
                 r"(?:(?P<ours>\d+\.\d+) / (?P<avif>\d+\.\d+) \((?P<n>\d+) of (?P<of>\d+)\)|-)\s*$")


def seconds(text: str) -> float:
    return float(text.lstrip(">"))


def test_bench_link_prints_a_row_per_run(tiny_models_dir, capsys):
    rc = main(["bench", "link", "--kbps", "64", "--rate", "2", "--target-s", "2", "--duration-s", "2",
               "--size", "96x64", "--quality", "0.3", "--drain-s", "10", "--delay-s", "0.01",
               "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir), "--threads", "1", "--step", "16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "latentwire bench link — 2 image/s of 96x64 for 2 s, latency target 2 s" in out
    rows = [m.groupdict() for m in map(ROW.match, out.splitlines()) if m]
    assert [(r["kbps"], r["mode"]) for r in rows] == [("64", "auto"), ("64", "q=0.30")], out
    for r in rows:
        assert int(r["offered"]) == 4 and 1 <= int(r["delivered"]) <= 4, out
        p50, p95 = seconds(r["p50"]), seconds(r["p95"])
        assert 0 <= p50 <= p95 < 60 and seconds(r["first"]) >= 0 and seconds(r["last"]) >= 0, out
        assert 5 < float(r["psnr"]) < 60 and 50 < int(r["bytes"]) < 2000, out
        if r["avif"] is not None:  # AVIF fits some of the 5 sample pictures: ours on those same ones
            assert 1 <= int(r["n"]) <= int(r["of"]) <= 5 and 5 < float(r["ours"]) < 60 and 5 < float(r["avif"]) < 60, out
    # Tiny pictures on 64 kbit/s with a 2 s target: every frame gets through, none late.
    assert all(r["delivered"] == r["offered"] and not r["p95"].startswith(">") for r in rows), out
    # --step: the auto run's link went to 16 kbit/s for its middle third; the timeline has its one window.
    step = re.search(r"64 kbit/s, auto, the link stepping to 16 kbit/s at (\d+\.\d) s and back at (\d+\.\d) s", out)
    assert step and 0.4 <= float(step[1]) < float(step[2]) <= 2.0, out
    window = re.search(r"^\s+0\s+64\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+\.\d)$", out, re.M)
    assert window and int(window[1]) == 4 and 50 < int(window[3]) < 2000 and int(window[3]) <= int(window[2]), out
    assert 0 <= int(window[4]) <= 4, out  # frames re-planned while queued (sender/replan.py)


def test_bench_link_outage_loses_nothing_and_says_when_the_backlog_was_through(tiny_models_dir, capsys):
    rc = main(["bench", "link", "--kbps", "64", "--rate", "2", "--target-s", "2", "--duration-s", "3",
               "--size", "96x64", "--drain-s", "15", "--delay-s", "0.01", "--no-avif",
               "--model", TINY_MODEL, "--models-dir", str(tiny_models_dir), "--threads", "1", "--outage-s", "1.5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    down = re.search(r"64 kbit/s, auto, the link down at (\d+\.\d) s and back at (\d+\.\d) s", out)
    assert down and 0.9 <= float(down[1]) and 1.4 <= float(down[2]) - float(down[1]) <= 1.8, out
    assert re.search(r"^\s+0\s+0\s+6\s+\d+\s+\d+\s+[0-6]\s+\d+\.\d$", out, re.M), out  # one window, its middle down
    cost = re.search(r"outage: (\d+) frames accepted, (\d+) lost \(never stored\); every frame uploaded before "
                     r"the link came back was stored (-?\d+\.\d) s after it came back", out)
    assert cost and int(cost[1]) == 6 and int(cost[2]) == 0 and 0 <= float(cost[3]) < 15, out


def test_bench_link_refuses_bad_arguments(capsys):
    assert main(["bench", "link", "--kbps", "64,zero"]) == 2
    assert main(["bench", "link", "--kbps", "0"]) == 2
    assert main(["bench", "link", "--target-s", "-1"]) == 2
    assert main(["bench", "link", "--step", "0"]) == 2
    assert main(["bench", "link", "--outage-s", "0"]) == 2
    assert main(["bench", "link", "--step", "16", "--outage-s", "5"]) == 2
    assert "--kbps is a comma-separated list" in capsys.readouterr().err
