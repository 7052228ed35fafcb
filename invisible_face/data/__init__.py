"""The data flow: UTKFace labels, validation and quarantine, ingesting new photos, facial landmarks, the
chips as tensors (``faces.FaceAttributes``) and the pixel <-> tensor conversions (``images``).
"""
