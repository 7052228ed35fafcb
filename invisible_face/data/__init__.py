"""The data flow: UTKFace labels, validation and quarantine, ingesting new photos, facial landmarks, and the
chips as tensors (``faces.FaceAttributes``).
"""
