"""Run the DVC pipeline (dvc.yaml) elsewhere: Kubeflow Pipelines (``kubeflow``), KubeRay (``kuberay``).

Both are generated from dvc.yaml, params.yaml and serving/config.yaml, never hand-copied, so the
DAG has one definition; ``stage`` is the generic in-container runner of a dvc.yaml stage's cmd.
"""
