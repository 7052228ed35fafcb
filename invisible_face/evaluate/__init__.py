"""Measuring protection: the baseline attacks, the metrics (MOSR, SSIM, PSNR, H-PN), the evaluation of
every method (transfer, robustness, frontier, adaptive attacker) and the MLflow registry gate.
"""
