"""Measuring protection: the baseline attacks, the evaluation of every method (transfer, robustness,
frontier, adaptive attacker), the evaluate stage's experiment design (``methods``: what is scored;
``experiment``: running and scoring them; ``headline`` and ``report``: metrics.json's top and report.md)
and the MLflow registry gate. The metrics (MOSR, SSIM, PSNR, H-PN) are
``invisible_face.metrics``, at the bottom of the package: lower floors score with them too.
"""
