# A small image that runs `gateway serve` as a non-root user, data in a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY fixtures ./fixtures
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# OHIF and fhirclient for /apps, at the versions and sha512 integrity of the lock file.
FROM node:20-slim AS apps
WORKDIR /apps
COPY smart_apps/package.json smart_apps/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY smart_apps /opt/gateway/smart_apps
COPY --from=apps /apps/node_modules /opt/gateway/smart_apps/node_modules
USER gateway
WORKDIR /var/lib/gateway
ENV GATEWAY_DATA_DIR=/var/lib/gateway/data \
    GATEWAY_APPS_DIR=/opt/gateway/smart_apps \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/gateway/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--migrate"]
