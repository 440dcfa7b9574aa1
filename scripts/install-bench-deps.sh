#!/usr/bin/env bash
# Installs the benchmark's peers and load generator from Debian when missing:
# nginx-light, haproxy, caddy, wrk (and curl); certbot and lego for the
# first-certificate comparison (bench/first_cert.py). Their system services are not
# started: the benchmark runs each front itself on loopback ports.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v certbot >/dev/null 2>&1 || need+=(certbot)   # bench/first_cert.py
command -v lego >/dev/null 2>&1 || need+=(lego)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
# Keep the packages' services from starting (and taking port 80) on install.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  created=1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
[ "$created" = 1 ] && $sudo rm -f "$policy"
exit "${status:-0}"
