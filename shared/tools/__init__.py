"""The tools around the codec library: the ``latentwire`` command line and what it runs.

    cli                 the ``latentwire`` entry point; each subcommand imports its module when it runs
    train, entropy_training, baselines      training (``latentwire train``, ``train-entropy``, the seed baselines)
    evaluate, rd        ``latentwire eval``: rate-distortion against real baselines, BD-rate
    benchmark, e2e_bench, soak, link_bench  ``latentwire bench``
    launcher, demo, cluster, engines        services and cluster servers as real processes on loopback
    link_emulator       a thin link on loopback, for tests and ``bench link``
    device/             one lent GPU's prepared runs (``python -m shared.tools.device.<name>``,
                        driven by tests/gpu/run_on_device.sh)

Unlike the library beside it (shared/*.py), a tool may import the services, FastAPI and httpx
(tests/unit/test_import_boundary.py keeps the library from importing this package).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the services' processes import from here
SAMPLES = ROOT / "tests" / "data" / "samples"  # the sample images the demo, the benchmarks and the tests send
