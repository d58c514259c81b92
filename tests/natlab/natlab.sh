#!/usr/bin/env bash
# natlab.sh - NAT-traversal test lab built only from Linux network namespaces.
# Adapted from shared/natlab/natlab.sh for the project's tests (tests/natlab/lab.py drives it;
# every test uses its own --prefix and tears the lab down in a fixture finaliser).
#
#   natlab.sh up   [--nat cone|symmetric|symmetric-hash] [--nat1 T] [--nat2 T]
#                  [--backend nft|iptables] [--router-fw drop|open] [--udp-timeout SECS] [--prefix P]
#   natlab.sh down [--prefix P]
#   natlab.sh status [--prefix P]
#   natlab.sh exec [--prefix P] NODE CMD...      # NODE = pub|r1|h1|r2|h2
# (NATLAB_PREFIX / NATLAB_NAT / NATLAB_BACKEND / NATLAB_ROUTER_FW / NATLAB_UDP_TIMEOUT env vars work too)
#
# Topology (everything lives in namespaces; nothing is added to the host netns):
#
#   [P-h1 10.1.0.2] --eth0/lan-- [P-r1 10.1.0.1 | wan 198.18.0.1] --+
#                                                                  |  bridge "inet" in P-pub
#   [P-h2 10.2.0.2] --eth0/lan-- [P-r2 10.2.0.1 | wan 198.18.0.2] --+  198.18.0.10 + .11 (rendezvous/relay)
#                                                                     198.18.0.254 ("ISP gateway", no forwarding)
# NAT types (applied on each router's wan interface):
#   cone            plain MASQUERADE: keeps the source port when free
#                   -> endpoint-independent mapping, port-restricted filtering (conntrack)
#   symmetric       MASQUERADE fully-random (iptables --random-fully): new random port per
#                   conntrack entry, i.e. per destination -> address+port-dependent mapping
#   symmetric-hash  MASQUERADE random (iptables --random): port derived from a keyed hash that
#                   includes the destination -> also per-destination mapping
# --router-fw drop (default): router drops unsolicited traffic arriving on wan (INPUT and FORWARD),
#   like a home router.  --router-fw open: INPUT accepts everything (shows the conntrack-clash pitfall).
set -euo pipefail

PREFIX="${NATLAB_PREFIX:-nl}"
NAT1="${NATLAB_NAT:-cone}"
NAT2="${NATLAB_NAT:-cone}"
BACKEND="${NATLAB_BACKEND:-nft}"
ROUTER_FW="${NATLAB_ROUTER_FW:-drop}"
UDP_TIMEOUT="${NATLAB_UDP_TIMEOUT:-}"   # empty = kernel default (30 s unreplied / 120 s stream)

usage() { sed -n '2,10p' "$0" >&2; exit 2; }

cmd="${1:-}"; [ -n "$cmd" ] || usage; shift
extra=()
if [ "$cmd" = exec ]; then   # exec [--prefix P] NODE CMD...: the command passes through untouched
  if [ "${1:-}" = --prefix ]; then PREFIX="$2"; shift 2; fi
  extra=("$@"); set --
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --nat) NAT1="$2"; NAT2="$2"; shift 2;;
    --nat1) NAT1="$2"; shift 2;;
    --nat2) NAT2="$2"; shift 2;;
    --backend) BACKEND="$2"; shift 2;;
    --router-fw) ROUTER_FW="$2"; shift 2;;
    --udp-timeout) UDP_TIMEOUT="$2"; shift 2;;
    --prefix) PREFIX="$2"; shift 2;;
    *) extra+=("$1"); shift;;
  esac
done

case "$PREFIX" in *[!a-zA-Z0-9_]*|"") echo "bad prefix: $PREFIX" >&2; exit 2;; esac
NS_PUB="$PREFIX-pub"; NS_R1="$PREFIX-r1"; NS_H1="$PREFIX-h1"; NS_R2="$PREFIX-r2"; NS_H2="$PREFIX-h2"
ALL_NS=("$NS_H1" "$NS_H2" "$NS_R1" "$NS_R2" "$NS_PUB")

ns_exists() { [ -e "/run/netns/$1" ]; }

do_down() {
  local ns pids
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    # a namespace stays alive while a process is inside it: stop what runs there (by PID)
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; fi
  done
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [ -n "$pids" ]; then sleep 0.2; kill -9 $pids 2>/dev/null || true; fi
    # deleting a netns destroys its veth ends (and so the peers), its nft/iptables rules and conntrack
    ip netns del "$ns"
  done
}

masq_nft() {   # $1 = nat type -> nft masquerade statement
  case "$1" in
    cone) echo "masquerade";;
    symmetric) echo "masquerade fully-random";;
    symmetric-hash) echo "masquerade random";;
    *) echo "unknown NAT type: $1" >&2; exit 2;;
  esac
}
masq_ipt() {
  case "$1" in
    cone) echo "-j MASQUERADE";;
    symmetric) echo "-j MASQUERADE --random-fully";;
    symmetric-hash) echo "-j MASQUERADE --random";;
    *) echo "unknown NAT type: $1" >&2; exit 2;;
  esac
}

router_rules() {  # $1 = router ns, $2 = nat type
  local ns="$1" nat="$2"
  if [ "$BACKEND" = nft ]; then
    local input_drop=""
    [ "$ROUTER_FW" = drop ] && input_drop='iifname "wan" drop'
    ip netns exec "$ns" nft -f - <<EOF
table ip natlab {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $(masq_nft "$nat")
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    $input_drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    iifname "wan" oifname "lan" ct state established,related accept
  }
}
EOF
  elif [ "$BACKEND" = iptables ]; then
    ip netns exec "$ns" sh -e -c "
      iptables -t nat -A POSTROUTING -o wan $(masq_ipt "$nat")
      iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
      $( [ "$ROUTER_FW" = drop ] && echo 'iptables -A INPUT -i wan -j DROP' )
      iptables -P FORWARD DROP
      iptables -A FORWARD -i lan -o wan -j ACCEPT
      iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    "
  else
    echo "unknown backend: $BACKEND" >&2; exit 2
  fi
}

do_up() {
  masq_nft "$NAT1" >/dev/null; masq_nft "$NAT2" >/dev/null   # validate early
  do_down   # idempotent: remove leftovers of an earlier run with this prefix
  trap 'echo "natlab: setup failed, tearing down" >&2; do_down' ERR
  local ns
  for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; done

  # "public internet": one bridge, rendezvous/relay addresses, no forwarding
  ip -n "$NS_PUB" -b - <<EOF
link set lo up
link add inet type bridge
link set inet up
addr add 198.18.0.10/24 dev inet
addr add 198.18.0.11/24 dev inet
addr add 198.18.0.254/24 dev inet
EOF

  local i r h
  for i in 1 2; do
    r="$PREFIX-r$i"; h="$PREFIX-h$i"
    # wan veth: router <-> bridge port in pub; lan veth: router <-> host
    ip -n "$NS_PUB" link add "wan$i" type veth peer name wan netns "$r"
    ip -n "$NS_PUB" link set "wan$i" master inet up
    ip -n "$r" link add lan type veth peer name eth0 netns "$h"
    ip -n "$r" -b - <<EOF
link set lo up
link set wan up
link set lan up
addr add 198.18.0.$i/24 dev wan
addr add 10.$i.0.1/24 dev lan
route add default via 198.18.0.254
EOF
    ip -n "$h" -b - <<EOF
link set lo up
link set eth0 up
addr add 10.$i.0.2/24 dev eth0
route add default via 10.$i.0.1
EOF
    # forwarding is per-namespace and off by default in a new netns
    ip netns exec "$r" sysctl -q -w net.ipv4.ip_forward=1
    if [ -n "$UDP_TIMEOUT" ]; then  # NAT mapping lifetime; per-netns, so tests can shorten it
      ip netns exec "$r" sysctl -q -w net.netfilter.nf_conntrack_udp_timeout="$UDP_TIMEOUT" \
        net.netfilter.nf_conntrack_udp_timeout_stream="$UDP_TIMEOUT"
    fi
  done
  router_rules "$NS_R1" "$NAT1"
  router_rules "$NS_R2" "$NAT2"
  trap - ERR
  echo "natlab up: prefix=$PREFIX nat1=$NAT1 nat2=$NAT2 backend=$BACKEND router-fw=$ROUTER_FW udp-timeout=${UDP_TIMEOUT:-default}"
}

do_status() {
  local ns
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then
      echo "== $ns"; ip -n "$ns" -br addr | grep -v '^lo'
    fi
  done
  for ns in "$NS_R1" "$NS_R2"; do
    if ns_exists "$ns"; then
      echo "== $ns conntrack (udp/tcp)"; ip netns exec "$ns" conntrack -L 2>/dev/null || true
    fi
  done
}

case "$cmd" in
  up) do_up;;
  down) do_down; echo "natlab down: prefix=$PREFIX";;
  status) do_status;;
  exec)
    node="${extra[0]:-}"; [ -n "$node" ] || usage
    exec ip netns exec "$PREFIX-$node" "${extra[@]:1}";;
  *) usage;;
esac
