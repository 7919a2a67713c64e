"""The pure parts of ``latentwire bench soak`` (shared/tools/soak.py): percentiles, the memory verdict,
reading RSS, tiling, the report. The soak itself runs for minutes and is a bench target, not a test."""

from __future__ import annotations

import io
import math
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from shared.tools.soak import (GROWTH_LIMIT, MemoryVerdict, RssSample, SoakReport, format_report, memory_verdict,
                               percentile, read_rss_kb, tiles)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert math.isnan(percentile([], 50))


def samples(*kb_sender: int, step_s: float = 10.0) -> list[RssSample]:
    return [RssSample(i * step_s, {"sender": kb, "receiver": 1000}) for i, kb in enumerate(kb_sender)]


def test_growth_is_measured_from_the_warm_up_point_not_the_start():
    # 100 s load, samples every 10 s: start 500, warm-up climbs to 1000 by t=20 s (20 %), then flat.
    run = samples(500, 900, 1000, 1010, 1020, 1000, 1030, 1040, 1050, 1060, 1080)
    v = memory_verdict(run, "sender", load_s=100.0)
    assert (v.start_kb, v.warm_kb, v.peak_kb, v.end_kb) == (500, 1000, 1080, 1080)
    assert v.growth == pytest.approx(0.08) and v.flat


def test_growth_over_the_limit_is_flagged():
    run = samples(500, 900, 1000, 1030, 1060, 1090, 1120, 1150, 1180, 1210, 1240)
    v = memory_verdict(run, "sender", load_s=100.0)
    assert v.growth == pytest.approx(0.24) and not v.flat
    assert GROWTH_LIMIT == 0.10


def test_samples_after_the_load_are_ignored_and_missing_processes_skipped():
    run = samples(1000, 1000, 1000, 5000)  # t = 0, 10, 20, 30 s; the load ended at 25 s
    run.insert(2, RssSample(15.0, {"receiver": 1000}))  # the sender could not be read once
    v = memory_verdict(run, "sender", load_s=25.0)
    assert v.end_kb == 1000 and v.peak_kb == 1000 and v.flat
    with pytest.raises(ValueError, match="no RSS samples of the nobody"):
        memory_verdict(run, "nobody", load_s=25.0)


def test_read_rss_of_this_process():
    kb = read_rss_kb(os.getpid())
    assert 10_000 < kb < 64 * 1024 * 1024  # more than 10 MiB (torch is loaded), less than 64 GiB


def test_tiles_cut_non_overlapping_squares():
    rgb = np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    cut = tiles(buf.getvalue(), 64)
    assert len(cut) == 2  # 1 row x 2 columns of 64 x 64
    second = np.asarray(Image.open(io.BytesIO(cut[1])))
    assert np.array_equal(second, rgb[0:64, 64:128])
    assert len(tiles(buf.getvalue(), 0)) == 1 and len(tiles(buf.getvalue(), 200)) == 1


def report(**overrides) -> SoakReport:
    flat = MemoryVerdict(start_kb=800 * 1024, warm_kb=900 * 1024, peak_kb=910 * 1024, end_kb=905 * 1024,
                         growth=905 / 900 - 1)
    values = dict(duration_s=600.0, concurrency=2, image_desc="30 tiles", quality=0.5,
                  latencies_ms=[float(v) for v in range(1, 101)], statuses=Counter({"202": 1190, "503": 10}),
                  accepted=1190, stored=1190, unexpected_stored=0,
                  outbox={"queued": 0, "delivered": 1190, "failed": 0}, drain_s=1.0,
                  memory={"sender": flat, "receiver": flat})
    values.update(overrides)
    return SoakReport(**values)


def test_report_table_and_verdict():
    text = format_report(report())
    for row in ("requests/s                                 2.00", "p50 / p99 (ms)       50 / 99",
                "202: 1190, 503: 10", "accepted (202) / stored in receiver        1190 / 1190",
                "sender RSS MB start / warm / peak / end    800 / 900 / 910 / 905", "+0.6%: flat", "verdict"):
        assert row in text, (row, text)
    assert report().ok and text.endswith("ok")


@pytest.mark.parametrize("overrides", [
    {"stored": 1189},  # an accepted image never reached the store
    {"unexpected_stored": 1},
    {"statuses": Counter({"202": 1190, "500": 1})},
    {"statuses": Counter({"202": 1190, "ConnectError": 1})},
    {"memory": {"sender": MemoryVerdict(800, 900, 1000, 1000, 1000 / 900 - 1)}},
], ids=["lost", "unexpected", "500", "no answer", "growth"])
def test_report_fails_on_loss_errors_or_growth(overrides):
    r = report(**overrides)
    assert not r.ok and format_report(r).endswith("FAILED")
