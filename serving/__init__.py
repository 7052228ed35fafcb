"""Ray Serve application for the protector, one file per role: ``settings`` (config.yaml read and
merged), ``replica`` (the model deployment), ``ingress`` (HTTP routes and page), ``errors`` (the JSON
errors and the dead-replica test), ``app`` (the launcher Serve's import path names).
"""
