"""Protecting photos: the protector (export, load, protect a photo or a chip, strength presets), photo
reading and writing, the batch runner and the ``invisible-face`` command line.
"""
