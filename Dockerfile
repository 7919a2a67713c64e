# One image for both services. GPU: torch 2.14.1 from PyPI bundles its CUDA runtime, so a plain
# Python base works with the NVIDIA container toolkit; without a GPU it runs on the CPU.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY sender ./sender
COPY receiver ./receiver
COPY models ./models
# Editable install: the package finds the shipped checkpoint in /app/models.
RUN pip install -e . \
    && useradd --create-home --uid 10001 latentwire \
    && mkdir -p /data/receiver /data/sender \
    && chown -R latentwire /data

USER latentwire
EXPOSE 8000 8001
CMD ["latentwire", "--help"]
