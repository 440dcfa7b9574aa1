#!/usr/bin/env bash
# Installs the Debian packages certproxy's demo and tests use, when missing:
# the real registry, the real skopeo and podman clients, htpasswd, Pebble (an ACME test CA),
# what a Python virtualenv needs, a C compiler and Python's headers (the compiled build),
# and for the container tier a Docker engine
# (docker.io), debootstrap (its base image), busybox-static (the stand-ins'
# wget), iproute2 (its network namespace) and Chromium; Prometheus and nginx for the
# metrics and doctor tests. Idempotent; apt-get runs only if needed.
set -euo pipefail

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v podman >/dev/null 2>&1 || need+=(podman)   # the access tests' second OCI client (no daemon needed)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
[ -x /usr/sbin/named ] || need+=(bind9)   # dns-01 tests: an authoritative server taking RFC 2136 updates
[ -x /usr/sbin/pdns_server ] || need+=(pdns-server)   # dns-01 tests through dns-lexicon's powerdns provider
[ -f /usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql ] || need+=(pdns-backend-sqlite3)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v testssl >/dev/null 2>&1 || need+=(testssl.sh)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)   # tests drop capabilities with it
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)   # another docker client may be in PATH
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/bin/busybox ] || need+=(busybox-static)   # wget in the registry:2 stand-in, as the real image has
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)   # the metrics tests scrape certproxy with it (promtool too)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)   # certproxy doctor's tests: deliberately broken fronts
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# make deps compiles the data plane's hot modules (setup.py): a C compiler and Python's headers
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
