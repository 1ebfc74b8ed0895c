# bnexp on a CUDA PyTorch image: torch, CUDA and cuDNN come from the base; bnexp and its other dependencies on top.
#   docker build -t bnexp .
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/outputs:/app/outputs" bnexp                 # = the CMD below
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/outputs:/app/outputs" bnexp python -m bnexp.run model.bn=off
#   docker run --gpus all -e BNEXP_STORAGE=postgresql://user:pw@dbhost:5432/bnexp \
#       -v "$PWD/data:/data" -v "$PWD/outputs:/app/outputs" bnexp python -m bnexp.sweep sweep=lr_stability
# MNIST lives in the /data volume (BNEXP_DATA_DIR=/data/mnist): downloaded there, checksummed, on first use.
# Results go to /app/outputs (mount it, or they stay in the container). Several sweep containers against
# one storage share the work, as SLURM array tasks do (scripts/slurm_sweep_workers.sh).
# Another CUDA/torch pair: docker build --build-arg BASE=pytorch/pytorch:<torch>-cuda<x.y>-cudnn9-runtime .
ARG BASE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BNEXP_DATA_DIR=/data/mnist

WORKDIR /app

# A plain (not editable) install: the Hydra configs are package data (bnexp/conf). The base image's torch
# satisfies torch>=2.1, so pip leaves it (and its CUDA build) alone.
COPY pyproject.toml README.md ./
COPY bnexp/ bnexp/
RUN pip install --no-cache-dir ".[cluster]"

COPY scripts/ scripts/
RUN mkdir -p /data/mnist /app/outputs \
    && python -c "import bnexp.run, bnexp.sweep.app, torch; print('bnexp ok, torch', torch.__version__)"

VOLUME ["/data"]
CMD ["python", "-m", "bnexp.run", "model.bn=pre"]
