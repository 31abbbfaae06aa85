#!/usr/bin/env bash
# Debian packages of the two-host Horovod test (tests/test_horovod_two_hosts.py): iproute2 for the
# network namespaces and the veth pair, util-linux for nsenter and mount, OpenSSH's server and
# client for horovodrun's ssh launcher. Needs root; the test itself starts and stops its own sshd
# (the package's service is not needed). Run it once on a CI machine before `make test`.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: needs root (apt-get install); without it the two-host test is skipped" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iproute2 util-linux openssh-server openssh-client
