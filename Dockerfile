# The project image for every scaled-out run: Kubeflow tasks (pipelines/kubeflow.py), the KubeRay
# RayJob and RayService (serving/kuberay/), and plain Ray cluster nodes. Not built in the dev
# sandbox (no Docker engine there): build with `docker build -t invisible-face:latest .`.
FROM python:3.11-slim

# libgl1 + libglib2.0-0: OpenCV (face-alignment); wget: KubeRay's health probes; git: dvc remotes
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 wget git \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DVC_NO_ANALYTICS=1 \
    PYTHONUNBUFFERED=1 PYTHONPATH=/app
WORKDIR /app

# torch first, with the pins of pyproject.toml, in its own layer (the largest by far)
RUN pip install torch==2.14.1 torchvision==0.29.1

# the library and its dependencies; a code-only change rebuilds from the COPY below
COPY pyproject.toml ./
COPY invisible_face ./invisible_face
RUN pip install .

# stages, serving, pipelines, params, dvc.yaml, data.dvc, .dvc/config (.dockerignore drops data,
# artifacts, MLflow stores and caches). No .git in the image: DVC runs without an SCM. The DVC
# remote in .dvc/config resolves to /shared/dvc-remote here: mount it there, or point it elsewhere
# (`dvc remote modify --local shared url s3://...`) before `dvc pull`.
COPY . .
RUN dvc config --local core.no_scm true

CMD ["invisible-face", "--help"]
