# certproxy: one small image, running as a non-root user.
#
# The dependency wheels are built from pyproject.toml alone, before the code
# is copied in, so a change to certproxy/ rebuilds only certproxy's own wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; \
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt
COPY README.md ./
COPY certproxy ./certproxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/certproxy --shell /usr/sbin/nologin certproxy \
    && mkdir -p /var/lib/certproxy && chown certproxy:certproxy /var/lib/certproxy && chmod 0700 /var/lib/certproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
ENV CERTPROXY_STORE=/var/lib/certproxy \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/certproxy"]
EXPOSE 80 443 5000
USER certproxy
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["certproxy", "healthcheck"]
ENTRYPOINT ["certproxy"]
CMD ["serve"]
