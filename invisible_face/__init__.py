"""Invisible-Face: local, directional adversarial perturbations that hide facial attributes.

The method lives here as one importable package; the pipeline stages under ``components/``,
the CLI, the Serve app and the tests all import it.
"""

__version__ = "0.1.0"
