# Serving image: TorchServe 0.12 with CPU torch, Java 17, and nginx in front of it checking the clients' keys.
# No model inside: mount a folder of .mar files (./archive.sh CKPT NAME) at /home/model-server/model-store
# and a file of client keys at /home/model-server/keys/api-keys.
#
#   docker build -t textclf-serve:0.13.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/model_store:/home/model-server/model-store:ro" \
#     -v "$PWD/keys:/home/model-server/keys:ro" textclf-serve:0.13.0
#
# Kubernetes manifests, the key design and what was checked without a Docker daemon: deploy/README.md.

# bookworm: Debian 12 still ships openjdk-17 (Debian 13, the base of the plain 3.11-slim tag, does not)
FROM python:3.11-slim-bookworm

# Java 17 for TorchServe's frontend; tini as PID 1 passes SIGTERM on to the entrypoint and reaps orphans.
# Debian's versions are not pinned (DL3008): its security updates replace them, the base tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini nginx \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the PyTorch CPU index: the PyPI wheel would bring the CUDA libraries (gigabytes).
# Then the rest, every version pinned; `torch==2.13.0` there is already satisfied by 2.13.0+cpu.
COPY deploy/requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
 && pip install --no-cache-dir -r /tmp/requirements-serve.txt \
 && rm /tmp/requirements-serve.txt

# A non-root user with fixed ids: Kubernetes checks runAsNonRoot against the numeric USER, and the Secret's
# files are readable through fsGroup 1000.
RUN groupadd --gid 1000 model-server \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/model-server --shell /usr/sbin/nologin model-server \
 && mkdir -p /home/model-server/model-store /home/model-server/config /home/model-server/keys /home/model-server/work \
 && chown 1000:1000 /home/model-server/model-store /home/model-server/work

COPY deploy/entrypoint.sh /opt/textclf/deploy/entrypoint.sh
COPY serving/proxy.py /opt/textclf/serving/proxy.py
COPY deploy/nginx/textclf.conf.in /opt/textclf/deploy/nginx/textclf.conf.in
# The defaults; Kubernetes mounts the ConfigMap over this folder.
COPY config.properties handlers/model-config.yaml /home/model-server/config/

USER 1000:1000
WORKDIR /home/model-server
VOLUME ["/home/model-server/model-store"]
# 8080: nginx (a key needed, except GET /ping, /live and /v2/health/* for the probes); 8082: Prometheus metrics.
# TorchServe's inference (8085), management (8081) and gRPC (7070, 7071) ports listen on 127.0.0.1 only.
EXPOSE 8080 8082
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/textclf/deploy/entrypoint.sh"]
