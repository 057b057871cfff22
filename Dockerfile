# syntax=docker/dockerfile:1
# scep-server: build a virtual environment with the package and its dependencies, then copy it into a slim
# image that runs as an unprivileged user. See README "Container".
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scep_server ./scep_server
COPY crl ./crl
COPY otp ./otp
COPY trustkit ./trustkit
RUN python -m venv /opt/scep-server \
 && /opt/scep-server/bin/pip install . \
 && /opt/scep-server/bin/scep-server --help >/dev/null

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 scep \
 && useradd --system --uid 10001 --gid scep --home-dir /data --no-create-home --shell /usr/sbin/nologin scep \
 && mkdir /data && chown scep:scep /data && chmod 0700 /data
COPY --from=build /opt/scep-server /opt/scep-server
# Inside the container the server listens on every address; certificates name server.base_url, which the
# deployment sets (SCEP_SERVER_SERVER__BASE_URL): without it the server serves the CA but issues nothing.
# Secrets come from the environment (SCEP_CA_PASSPHRASE, SCEP_SERVER_DATABASE__URL, otp.kek_env) or from files
# (SCEP_SERVER_CA__PASSPHRASE_FILE, SCEP_SERVER_DATABASE__URL_FILE, SCEP_SERVER_OTP__KEK_FILE: /run/secrets/...).
ENV PATH=/opt/scep-server/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCEP_SERVER_DATA_DIR=/data \
    SCEP_SERVER_SERVER__LISTEN=0.0.0.0:8080 \
    SCEP_SERVER_LOG__FORMAT=json
USER scep:scep
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SCEP_SERVER_SERVER__LISTEN', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["scep-server"]
CMD ["serve"]
