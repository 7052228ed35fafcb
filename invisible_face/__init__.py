"""Invisible-Face: local, directional adversarial perturbations that hide facial attributes.

The library, grouped by the flow it serves (each subpackage's docstring says what it holds):

- ``data``: labels, validation, ingest, landmarks, the chips as tensors
- ``models``: the attribute networks and their Ray Train loop, the embedding adversary, perceptual
  distance, identity embeddings
- ``method``: regions, DP and sets, the generator and its training, losses, refinement, RP, recompression, tuning
- ``protect``: the protector, photo I/O, the batch runner and the CLI
- ``evaluate``: baseline attacks, metrics, the evaluation, the registry gate

plus ``params`` (the one source of every setting) and ``tracking`` (MLflow set-up). The pipeline
stages under ``components/``, the CLI, the Serve app and the tests all import it.
"""

__version__ = "0.1.0"
