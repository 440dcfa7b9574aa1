# certproxy: one small image, running as a non-root user.
#
# The dependency wheels are built from pyproject.toml alone, before the code
# is copied in, so a change to certproxy/ rebuilds only certproxy's own wheel.
# The build stage is the full Python image (a C compiler and Python's headers): it
# compiles the data plane's hot modules with mypyc (setup.py, docs/0003), which reads
# the types of the dependencies installed beside it; the image that runs is the slim
# one, with the wheels only. --build-arg CERTPROXY_COMPILE=0
# builds the pure-Python wheel.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; \
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt \
    && pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt \
    && pip install --no-cache-dir 'setuptools>=77' wheel 'mypy>=2.4,<2.5'
COPY README.md setup.py ./
COPY certproxy ./certproxy
ARG CERTPROXY_COMPILE=1
RUN CERTPROXY_COMPILE=$CERTPROXY_COMPILE LDFLAGS=-s \
    pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

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
