# One image for the API and the workers. Build: docker build -t secateurs .
# The default torch wheel from PyPI carries CUDA: the same image runs GPU workers (with the NVIDIA
# container toolkit) and CPU workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SECATEURS_HOME=/var/lib/secateurs
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 secateurs && mkdir -p /var/lib/secateurs \
    && chown secateurs /var/lib/secateurs

COPY pyproject.toml README.md ./
COPY _secateurs ./_secateurs
COPY pruning ./pruning
COPY api ./api
COPY worker ./worker
COPY db ./db
COPY client ./client
RUN pip install ".[server]"

USER secateurs
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["secateurs", "api", "--host", "0.0.0.0", "--port", "8000"]
