#!/usr/bin/env bash
# A network namespace of its own for a local Ray cluster and tracking server (root only). A
# multi-node Ray cluster will not stay on 127.0.0.1: on the host it listens on the host's network
# address. In this namespace the only way out is a veth pair to the host, so Ray keeps to the
# namespace's loopback, and the host reaches servers there at one private address.
#
#   bash experiments/netns.sh create NAME   # prints the namespace's address, 10.231.N.2
#   bash experiments/netns.sh delete NAME
#   ip netns exec NAME COMMAND              # run COMMAND inside
set -euo pipefail

usage() { echo "usage: $0 create NAME | delete NAME" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
command=$1 name=$2

case $command in
  create)
    if [[ $(id -u) != 0 ]] || ! command -v ip > /dev/null; then
      echo "error: a network namespace needs root and iproute2 ('ip')" >&2
      exit 1
    fi
    exec 9> /tmp/splitcomp-netns.lock  # one creator at a time picks a free subnet
    flock 9
    for n in $(seq 0 255); do
      ip -o -4 addr | grep -q " 10\.231\.$n\." || break
    done
    ip netns add "$name"
    trap 'ip netns delete "$name" 2>/dev/null || true' ERR
    ip -n "$name" link set lo up
    # veth names: the subnet number keeps them unique (15 characters at most)
    ip link add "scv${n}h" type veth peer name "scv${n}n" netns "$name"
    ip addr add "10.231.$n.1/30" dev "scv${n}h"
    ip link set "scv${n}h" up
    ip -n "$name" addr add "10.231.$n.2/30" dev "scv${n}n"
    ip -n "$name" link set "scv${n}n" up
    echo "10.231.$n.2"
    ;;
  delete)
    ip netns delete "$name" 2>/dev/null || true  # takes its end of the veth pair, and so the pair
    ;;
  *) usage ;;
esac
