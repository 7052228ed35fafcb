"""The networks and how they are trained: the attribute classifiers (torchvision backbones, their Ray Train
loop and the shared Ray Train worker skeleton), the embedding adversary, the perceptual distance, and
the face-identity embedder.
"""
