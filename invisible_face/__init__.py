"""Invisible-Face: local, directional adversarial perturbations that hide facial attributes.

The library, grouped by the flow it serves (each subpackage's docstring says what it holds), one floor
on another; a module imports only from its own floor or the floors below (``lint-imports`` checks it
against the contract in pyproject.toml):

- ``protect``: the protector, photo I/O, the batch runner and the CLI | ``evaluate``: baseline attacks,
  the evaluation, the registry gate (side by side: neither imports the other)
- ``method``: regions, DP and sets, the generator and its training, losses, refinement, RP, recompression, tuning
- ``models``: the attribute networks and their Ray Train loop, class sets and margins, the embedding
  adversary, perceptual distance, identity embeddings
- ``data``: labels, validation, ingest, landmarks, the chips as tensors, pixel <-> tensor conversions
- ``stage``: the frame of the pipeline's stage scripts (arguments, params, MLflow run, metrics.json)
- ``metrics`` (MOSR, SSIM, PSNR, H-PN: every floor scores with them) | ``params`` (the one source of every
  setting) | ``tracking`` (MLflow set-up)

The pipeline stages under ``components/``, the CLI, the Serve app and the tests all import it.
"""

__version__ = "0.1.0"
