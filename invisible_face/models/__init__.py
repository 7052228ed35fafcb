"""The networks and how they are trained: the attribute classifiers (torchvision backbones, their Ray Train
loop and the shared Ray Train worker skeleton), the surrogate ensemble and the class sets and margins
that say when a model is fooled, the embedding adversary, the perceptual distance, and the
face-identity embedder.
"""
