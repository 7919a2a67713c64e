"""A lent GPU's prepared runs, each ``python -m shared.tools.device.<name>`` from the checkout's root
(tests/gpu/run_on_device.sh runs them on the device; README "Training on a lent GPU")."""
