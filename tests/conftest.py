"""Eight fake CPU devices for the whole suite, so mesh tests run beside the rest.

XLA reads the flag once, when jax first initialises a backend, so it must be set here,
before any test module imports jax.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
