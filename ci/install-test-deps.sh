#!/usr/bin/env bash
# Installs what the real-process test suite (tests/) needs on a Debian/Ubuntu
# machine: the reference etcd 3.4 server + etcdctl, protoc (needed to build the
# etcd-client dev-dependency), curl (the JSON gateway is tested as etcd's
# documentation drives it) and the python-etcd3 client library.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)
/usr/bin/python3 -c 'import etcd3' >/dev/null 2>&1 || need+=(python3-etcd3)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
etcd --version | sed -n 1p
etcdctl version | sed -n 1p
protoc --version
curl --version | sed -n 1p
