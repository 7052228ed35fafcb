"""The protection method: Algorithm 1's regions, DP (on the class sets of ``models.margins``), the
generator G and its training (LD-MAN), the losses, the refinement fallback, RP, recompression as
image ops, and Ray Tune over the loss weights.
"""
