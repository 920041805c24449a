#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the end-to-end suite (tests/cluster/) and the
# cluster benchmark: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (CRI),
# kubelet, kube-proxy (iptables) and CoreDNS, all as host processes with their state under
# .cache/cluster/ (logs in .cache/cluster/logs/). Pods get 10.244.0.0/24 on the bridge cni0, whose
# address 10.244.0.1 is the node IP (API server, kubelet and cluster DNS listen there only).
#
#   scripts/cluster.sh up [--nodes N]
#                              # install (apt) and build what is missing, start the node(s), import
#                              # the images (scripts/build-images.sh), apply deploy/; last line:
#                              #   activator: http://127.0.0.1:PORT
#                              # --nodes N: N worker nodes (default 1; see "nodes 2..N" below)
#   scripts/cluster.sh down    # stop everything `up` started (and any of its daemons left by an
#                              # `up` killed halfway); remove its netns, mounts, cni0, iptables
#                              # chains; restore the sysctls it changed
#   scripts/cluster.sh kill-node K  # node K >= 2 loses power (for the node-loss test); `up` revives it
#   scripts/cluster.sh status  # what runs
#   scripts/cluster.sh env     # `export KUBECONFIG=...` for a shell
# up, down and kill-node run one at a time per state dir: a second one waits for the first.
#
# Needs root (iptables, mounts, network namespaces). Nothing here pulls an image: the images come
# from scripts/build-images.sh and every Pod uses imagePullPolicy IfNotPresent or Never.
# Environment: ELASTICSERVING_CLUSTER_DIR (state, default .cache/cluster), CLUSTER_SKIP_DEPLOY=1
# (stop after the node is Ready), CLUSTER_SKIP_IMAGES=1 (import only the pause image).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${ELASTICSERVING_CLUSTER_DIR:-$REPO/.cache/cluster}"
LOGS="$STATE/logs"
RUN="$STATE/run"            # pid files, ports
PKI="$STATE/pki"
KCFG="$STATE/kubeconfigs"
ADMIN_KUBECONFIG="$STATE/kubeconfig"

NODE_NAME="elasticserving-node"
BRIDGE="cni0"
NODE_IP="10.244.0.1"
POD_CIDR="10.244.0.0/24"     # node k's: 10.244.(k-1).0/24, its node IP 10.244.(k-1).1
CLUSTER_CIDR="10.244.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
API_SERVICE_IP="10.96.0.1"
API_PORT=6443
KUBELET_PORT=10250
CLUSTER_DOMAIN="cluster.local"
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
PAUSE_IMAGE="docker.io/elasticserving/pause:3.10"
# Started in this order, stopped in the reverse one.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd coredns kubelet kube-proxy)
# Kernel settings the node changes (kubelet, kube-proxy, the bridge plugin): saved by `up`, restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
         net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom kernel.panic
         kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- helpers ---------------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_of() {  # a port chosen once per `up` for a loopback endpoint, remembered in run/ports
  local name="$1" port
  port="$(sed -n "s/^$name=//p" "$RUN/ports" 2>/dev/null | head -1)"
  if [ -z "$port" ]; then
    port="$(free_port)"
    echo "$name=$port" >> "$RUN/ports"
  fi
  echo "$port"
}

wait_until() {  # wait_until SECONDS DESCRIPTION CMD...: poll CMD until it succeeds
  local timeout="$1" what="$2" deadline
  shift 2
  deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what: not after ${timeout}s"
      return 1
    fi
    sleep 0.5
  done
}

pid_of() {  # the pid of a running component (checked against its command line), or nothing
  local name="$1" pid
  pid="$(cat "$RUN/$name.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  local cmd
  cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"${name%@*}"* ]] || return 1  # NAME@NODE: node NODE's NAME
  echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

start_daemon() {  # start_daemon NAME CMD...: a detached process (own session), output to logs/NAME.log
  local name="$1"
  shift
  if running "$name"; then
    return 0
  fi
  echo "==== $(date -u +%FT%TZ) $*" >> "$LOGS/$name.log"
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo "$!" > "$RUN/$name.pid"
  log "started $name (pid $!)"
}

exited() {  # fails the wait at once when the component died, with its log's tail
  local name="$1" pid
  # Alive is enough here: just after `start_daemon` the process may not have exec'd its program yet
  # (its cmdline is still the shell's), which `running` would take for a dead component.
  pid="$(cat "$RUN/$name.pid" 2>/dev/null)" || pid=""
  if [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
    return 0
  fi
  if ! running "$name"; then
    log "$name exited; last lines of $LOGS/$name.log:"
    tail -n 30 "$LOGS/$name.log" >&2 || true
    exit 1
  fi
}

wait_component() {  # wait_component NAME SECONDS CMD...: until CMD succeeds, failing if NAME dies
  local name="$1" timeout="$2" deadline
  shift 2
  deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    exited "$name"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name not ready after ${timeout}s; last lines of $LOGS/$name.log:"
      tail -n 30 "$LOGS/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

stop_daemon() {  # SIGTERM, then SIGKILL after a grace period
  local name="$1" grace="${2:-15}" pid i
  pid="$(pid_of "$name")" || { rm -f "$RUN/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for (( i = 0; i < grace * 10; i++ )); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
  rm -f "$RUN/$name.pid"
  log "stopped $name"
}

kctl() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

http_ok() { curl -fsS --max-time 3 "$@" -o /dev/null; }

# ---- install and build -----------------------------------------------------------------------------
install_packages() {
  # tool -> Debian package (kubectl: only when missing; another package may provide it)
  local -A pkg=([containerd]=containerd [runc]=runc [iptables]=iptables [conntrack]=conntrack
                [etcd]=etcd-server [openssl]=openssl [ip]=iproute2 [curl]=curl [python3]=python3
                [modprobe]=kmod [kubectl]=kubernetes-client [setsid]=util-linux)
  local need=() tool
  for tool in "${!pkg[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || need+=("${pkg[$tool]}")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
    && [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
  # The Debian containerd package starts a system containerd; ours runs beside it with its own
  # socket and state, so the system one is left alone.
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    # shellcheck disable=SC2046
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  fi
}

build_binaries() {
  # Debian's golang-go is too old for Kubernetes 1.32 (needs Go >= 1.23): no apt fallback here.
  BIN="$("$REPO/scripts/build-kube.sh")" \
    || die "scripts/build-kube.sh failed (it needs Go >= 1.23 on PATH unless the binaries are cached)"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
    [ -x "$BIN/$c" ] || die "$BIN/$c missing after scripts/build-kube.sh"
  done
}

# ---- configuration ---------------------------------------------------------------------------------
gen_pki() {
  [ -f "$PKI/done" ] && return 0
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 \
      -subj "/CN=elasticserving-node-ca" 2>/dev/null
    cat > apiserver.ext <<EOF
subjectAltName=IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN
extendedKeyUsage=serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # The API server's client certificate towards the kubelet (logs, exec): system:masters.
    echo "extendedKeyUsage=clientAuth" > client.ext
    openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
      -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
    openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile client.ext -out apiserver-kubelet-client.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Static bearer tokens, one identity per component (the default RBAC roles know these users).
    tok() { openssl rand -hex 24; }
    {
      echo "$(tok),admin,admin,\"system:masters\""
      echo "$(tok),system:kube-controller-manager,system:kube-controller-manager"
      echo "$(tok),system:kube-scheduler,system:kube-scheduler"
      echo "$(tok),system:node:$NODE_NAME,system:node:$NODE_NAME,\"system:nodes\""
      echo "$(tok),system:kube-proxy,system:kube-proxy"
      echo "$(tok),system:elasticserving-coredns,system:elasticserving-coredns"
    } > tokens.csv
    chmod 600 ./*.key tokens.csv
    touch done
  )
}

put() {  # stdin to FILE, only when it differs (kube-proxy exits when its config file changes)
  local file="$1" tmp
  tmp="$(mktemp "$file.XXXXXX")"
  cat > "$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else chmod 600 "$tmp"; mv -f "$tmp" "$file"; fi
}

token_of() { awk -F, -v u="$1" '$2 == u { print $1 }' "$PKI/tokens.csv"; }

write_kubeconfig() {  # write_kubeconfig FILE USER [CERT KEY]: USER's static token, or a client certificate
  local file="$1" user="$2" credential
  if [ -n "${3:-}" ]; then
    credential="client-certificate: $3
      client-key: $4"
  else
    credential="token: $(token_of "$user")"
  fi
  put "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: elasticserving
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority: $PKI/ca.crt
users:
  - name: $user
    user:
      $credential
contexts:
  - name: elasticserving
    context:
      cluster: elasticserving
      user: $user
current-context: elasticserving
EOF
  chmod 600 "$file"
}

gen_config() {
  mkdir -p "$KCFG"
  write_kubeconfig "$ADMIN_KUBECONFIG" admin
  write_kubeconfig "$KCFG/controller-manager" system:kube-controller-manager
  write_kubeconfig "$KCFG/scheduler" system:kube-scheduler
  write_kubeconfig "$KCFG/kubelet" "system:node:$NODE_NAME"
  write_kubeconfig "$KCFG/kube-proxy" system:kube-proxy
  write_kubeconfig "$KCFG/coredns" system:elasticserving-coredns
  gen_coredns_config
}

# The N_* variables name the node a function works on (node_vars sets them): its name, IP, pod CIDR,
# state dir (node 1's is $STATE itself, node k's $STATE/nodes/NAME), containerd socket, kubelet
# kubeconfig, cgroup root (node 1: the host's; node k: /NAME) and network namespace (node 1: none).
node_vars() {  # node_vars K
  local k="$1"
  N_K="$k"
  if [ "$k" -eq 1 ]; then
    N_NAME="$NODE_NAME"; N_DIR="$STATE"; N_KUBECONFIG="$KCFG/kubelet"; N_CGROUP_ROOT=""; N_NETNS=""
  else
    N_NAME="$NODE_NAME-$k"; N_DIR="$STATE/nodes/$N_NAME"; N_KUBECONFIG="$STATE/nodes/$N_NAME/kubeconfig"
    N_CGROUP_ROOT="/$N_NAME"; N_NETNS="es-$N_NAME"
  fi
  N_IP="10.244.$(( k - 1 )).1"
  N_CIDR="10.244.$(( k - 1 )).0/24"
  N_SOCK="$N_DIR/containerd/containerd.sock"
  N_HOST_VETH="es-h$k"; N_NODE_VETH="es-n$k"   # node k >= 2: the host end and the node end
  N_TRANSIT_HOST="10.243.$k.1"; N_TRANSIT_NODE="10.243.$k.2"
}

in_node() {  # in_node CMD...: CMD in the current node's mount and network namespaces (node 1: as is)
  if [ -z "$N_NETNS" ]; then "$@"; return; fi
  nsenter --mount="$N_DIR/ns/mnt" --net="/run/netns/$N_NETNS" -- "$@"
}

ports_of_node() {  # a loopback port per node and purpose (node k's are in its own network namespace)
  if [ "$N_K" -eq 1 ]; then port_of "$1"; else port_of "$N_NAME-$1"; fi
}

gen_node_config() {  # the current node's containerd, CNI, kubelet and kube-proxy configuration
  mkdir -p "$N_DIR/cni/net.d" "$N_DIR/containerd" "$N_DIR/kubelet"
  if [ "$N_K" -ne 1 ]; then gen_node_identity; fi
  put "$N_DIR/containerd/config.toml" <<EOF
# Generated by scripts/cluster.sh: the node's own containerd (own socket, root and state).
version = 2
root = "$N_DIR/containerd/root"
state = "$N_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$N_SOCK"
[ttrpc]
  address = "$N_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$N_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM lacks CAP_SYS_RESOURCE: lowering oom_score_adj fails ("can't get final child's PID
  # from pipe") unless containerd keeps it at or above its own.
  restrict_oom_score_adj = true
  # Pod network namespaces live under our state dir, not /var/run/netns: 'down' unmounts whatever a
  # sandbox torn down half-way left there (seen in CI: 7 cni-* netns outlived the node).
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF

  put "$N_DIR/cni/net.d/10-elasticserving.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "elasticserving",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$N_CIDR", "gateway": "$N_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$N_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # Pods resolve cluster names only (nothing routes out): no upstream servers, no host search list.
  echo "# Generated by scripts/cluster.sh: no upstream DNS for Pods" | put "$N_DIR/kubelet/resolv.conf"

  put "$N_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $N_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(ports_of_node kubelet-healthz)
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$N_SOCK
cgroupDriver: cgroupfs${N_CGROUP_ROOT:+
cgroupRoot: $N_CGROUP_ROOT}
failCgroupV1: false
failSwapOn: false
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$NODE_IP]
resolvConf: $N_DIR/kubelet/resolv.conf
podLogsDir: $N_DIR/kubelet/pod-logs
volumePluginDir: $N_DIR/kubelet/volume-plugins
serializeImagePulls: false
# Never garbage-collect the imported images: nothing could pull them back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
maxPods: 110
syncFrequency: 10s
fileCheckFrequency: 0s
EOF

  put "$N_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KCFG/kube-proxy
hostnameOverride: $N_NAME
mode: iptables
# Every node's pod CIDR: traffic from outside it to a Service is masqueraded.
clusterCIDR: $CLUSTER_CIDR
# NodePorts answer on loopback and the node IP only, never on the machine's outside interfaces.
nodePortAddresses: ["127.0.0.1/32", "$N_IP/32"]
healthzBindAddress: 127.0.0.1:$(ports_of_node kube-proxy-healthz)
metricsBindAddress: 127.0.0.1:$(ports_of_node kube-proxy-metrics)
iptables:
  localhostNodePorts: true
  syncPeriod: 30s
  minSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

gen_node_identity() {  # node k's kubelet client certificate (CN=system:node:NAME, O=system:nodes)
  local d="$N_DIR/pki"
  if [ ! -f "$d/kubelet.crt" ]; then
    mkdir -p "$d"
    echo "extendedKeyUsage=clientAuth" > "$d/client.ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$d/kubelet.key" -out "$d/kubelet.csr" \
      -subj "/O=system:nodes/CN=system:node:$N_NAME" 2>/dev/null
    openssl x509 -req -in "$d/kubelet.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 365 \
      -extfile "$d/client.ext" -out "$d/kubelet.crt" 2>/dev/null
    chmod 600 "$d/kubelet.key"
  fi
  write_kubeconfig "$N_KUBECONFIG" "system:node:$N_NAME" "$d/kubelet.crt" "$d/kubelet.key"
}

gen_coredns_config() {
  mkdir -p "$STATE/coredns"
  put "$STATE/coredns/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$(port_of coredns-health)
    ready 127.0.0.1:$(port_of coredns-ready)
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $KCFG/coredns elasticserving
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF

  put "$STATE/coredns/rbac.yaml" <<EOF
# The node's cluster DNS (CoreDNS on the host) reads Services, EndpointSlices, Pods and Namespaces.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: elasticserving:coredns
rules:
  - apiGroups: [""]
    resources: ["endpoints", "services", "pods", "namespaces"]
    verbs: ["list", "watch"]
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: elasticserving:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: elasticserving:coredns
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: system:elasticserving-coredns
EOF
}

# ---- host network and kernel -----------------------------------------------------------------------
save_sysctls() {
  [ -f "$RUN/sysctls" ] && return 0
  local k v
  for k in "${SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" || continue
    echo "$k=$v"
  done > "$RUN/sysctls.tmp"
  mv "$RUN/sysctls.tmp" "$RUN/sysctls"
}

restore_sysctls() {
  [ -f "$RUN/sysctls" ] || return 0
  local line
  while IFS= read -r line; do
    [ -n "$line" ] && sysctl -q -w "$line" >/dev/null 2>&1 || true
  done < "$RUN/sysctls"
  rm -f "$RUN/sysctls"
  log "restored sysctls"
}

setup_host() {
  save_sysctls
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  # Pod -> Service -> Pod on the same bridge needs the bridged replies to pass iptables (conntrack).
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null 2>&1 || true
  sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
  # The bridge exists before anything listens on the node IP; the CNI bridge plugin adopts it.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    echo "$BRIDGE" > "$RUN/bridge"
  fi
  local addrs
  addrs="$(ip -4 addr show dev "$BRIDGE")"
  [[ "$addrs" == *"inet $NODE_IP/"* ]] || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# ---- nodes 2..N: a network and a mount namespace each ------------------------------------------------
# Node k's containerd, kubelet and kube-proxy share one network namespace (es-NAME, joined to the host
# by a veth pair on a /30 transit net; its pod CIDR routed there) and one persistent mount namespace
# (its own /var/lib/kubelet, where the kubelet's device-plugin socket path is fixed, and its own model
# cache dir). Entered with nsenter: `ip netns exec` remounts /sys per process and the kubelet then
# finds no cgroup mounts. The control plane, CoreDNS and node 1 stay on the host.
cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | sort -u; }

setup_node_cgroups() {  # the node's cgroup root in every hierarchy (cpuset: the parent's cpus and mems)
  local h f
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h$N_CGROUP_ROOT"
    for f in cpuset.cpus cpuset.mems; do
      if [ -f "$h/$f" ] && [ -z "$(cat "$h$N_CGROUP_ROOT/$f")" ]; then cat "$h/$f" > "$h$N_CGROUP_ROOT/$f"; fi
    done
  done
}

setup_node_net() {
  [ -e "/run/netns/$N_NETNS" ] || ip netns add "$N_NETNS"
  if ! ip link show "$N_HOST_VETH" >/dev/null 2>&1; then
    ip link add "$N_HOST_VETH" type veth peer name "$N_NODE_VETH" netns "$N_NETNS"
  fi
  ip -4 addr show dev "$N_HOST_VETH" | grep -q "inet $N_TRANSIT_HOST/" || ip addr add "$N_TRANSIT_HOST/30" dev "$N_HOST_VETH"
  ip link set "$N_HOST_VETH" up
  local n=(ip -n "$N_NETNS")
  "${n[@]}" link set lo up
  "${n[@]}" -4 addr show dev "$N_NODE_VETH" | grep -q "inet $N_TRANSIT_NODE/" \
    || "${n[@]}" addr add "$N_TRANSIT_NODE/30" dev "$N_NODE_VETH"
  "${n[@]}" link set "$N_NODE_VETH" up
  # The bridge carries the node IP (the CNI bridge plugin adopts it), as cni0 does on the host.
  "${n[@]}" link show "$BRIDGE" >/dev/null 2>&1 || "${n[@]}" link add "$BRIDGE" type bridge
  "${n[@]}" -4 addr show dev "$BRIDGE" | grep -q "inet $N_IP/" || "${n[@]}" addr add "$N_IP/24" dev "$BRIDGE"
  "${n[@]}" link set "$BRIDGE" up
  "${n[@]}" route replace default via "$N_TRANSIT_HOST" src "$N_IP"
  ip route replace "$N_CIDR" via "$N_TRANSIT_NODE" dev "$N_HOST_VETH"
  nsenter --net="/run/netns/$N_NETNS" sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
  nsenter --net="/run/netns/$N_NETNS" sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null 2>&1 || true
}

host_dir() {  # host_dir DIR: mkdir -p, remembered (for `down`) when it was not there
  [ -d "$1" ] && return 0
  mkdir -p "$1"
  echo "$1" >> "$STATE/host-dirs"
}

setup_node_mounts() {
  local ns="$N_DIR/ns"
  mkdir -p "$ns" "$N_DIR/var-lib-kubelet" "$N_DIR/model-cache/models"
  # the storage-initializer (uid 65532) makes its namespace's directory in the node's model cache
  chmod 1777 "$N_DIR/model-cache/models"
  if ! grep -q " $ns " /proc/self/mounts; then
    mount --bind "$ns" "$ns"
    mount --make-private "$ns"
  fi
  if ! grep -q " $ns/mnt " /proc/self/mounts; then
    touch "$ns/mnt"
    unshare --mount="$ns/mnt" --propagation slave true
    host_dir /var/lib/kubelet
    host_dir /var/cache/elasticserving
    nsenter --mount="$ns/mnt" -- mount --bind "$N_DIR/var-lib-kubelet" /var/lib/kubelet
    nsenter --mount="$ns/mnt" -- mount --bind "$N_DIR/model-cache" /var/cache/elasticserving
  fi
}

extra_nodes() {  # K of every node k >= 2 set up (from their state dirs)
  local f
  for f in "$STATE"/nodes/*/index; do if [ -f "$f" ]; then cat "$f"; fi; done | sort -n
}

iptables_cleanup() {  # remove every KUBE-* and CNI-* chain and the rules jumping to them
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$ipt" -w -t "$table" -S >/dev/null 2>&1 || continue
      # Rules in any chain that jump to ours (built-in chains included), then our chains.
      { "$ipt" -w -t "$table" -S | grep -E -- '-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)' || true; } \
        | sed 's/^-A /-D /' | while IFS= read -r rule; do
          eval "$ipt -w -t $table $rule" 2>/dev/null || true
        done
      for chain in $("$ipt" -w -t "$table" -S | sed -n 's/^-N \(\(KUBE-\|CNI-\)[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S | sed -n 's/^-N \(\(KUBE-\|CNI-\)[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# ---- images ----------------------------------------------------------------------------------------
ctr_() { ctr --address "${N_SOCK:-$CONTAINERD_SOCK}" -n k8s.io "$@"; }
IMPORTED=""

import_image() {  # import_image TARBALL: unless containerd already has that manifest
  local tarball="$1" name digest have
  read -r name digest < <(tar -xOf "$tarball" index.json | python3 -c '
import json, sys
m = json.load(sys.stdin)["manifests"][0]
print(m["annotations"]["io.containerd.image.name"], m["digest"])')
  have="$(ctr_ images ls "name==$name" 2>/dev/null | awk 'NR > 1 { print $3 }')"
  if [ "$have" = "$digest" ]; then
    return 0
  fi
  log "importing $name ($(du -h "$tarball" | cut -f1))"
  ctr_ images import "$tarball" >/dev/null
  IMPORTED=1
}

IMAGE_LINES=""
import_images() {  # into the current node's containerd (built once per `up`)
  local script="$REPO/scripts/build-images.sh" names=() out image tarball
  [ -x "$script" ] || die "scripts/build-images.sh missing: cannot build the images"
  if [ -n "${CLUSTER_SKIP_IMAGES:-}" ]; then names=(pause); fi
  if [ -z "$IMAGE_LINES" ]; then
    IMAGE_LINES="$("$script" ${names[@]+"${names[@]}"})" || die "scripts/build-images.sh failed"
  fi
  out="$IMAGE_LINES"
  # `IMAGE TARBALL` lines (a build may print other lines, e.g. the output of a RUN step)
  while read -r image tarball; do
    [[ "$image" == */* && "$tarball" == *.tar && -f "$tarball" ]] || continue
    import_image "$tarball"
  done <<<"$out"
  local have
  have="$(ctr_ images ls -q)"
  grep -qx "$PAUSE_IMAGE" <<<"$have" || die "$PAUSE_IMAGE not imported"
}

# ---- up --------------------------------------------------------------------------------------------
start_control_plane() {
  local etcd_port etcd_peer
  etcd_port="$(port_of etcd-client)"
  etcd_peer="$(port_of etcd-peer)"
  start_daemon etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$etcd_peer" \
    --log-level warn
  wait_component etcd 60 http_ok "http://127.0.0.1:$etcd_port/health"

  start_daemon kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false --cert-dir "$STATE/apiserver-certs" --v 1
  wait_component kube-apiserver 120 kctl get --raw /readyz

  start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KCFG/controller-manager" \
    --authentication-kubeconfig "$KCFG/controller-manager" --authorization-kubeconfig "$KCFG/controller-manager" \
    --bind-address 127.0.0.1 --secure-port "$(port_of controller-manager)" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR" \
    --leader-elect=false --profiling=false --v 1
  start_daemon kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$KCFG/scheduler" \
    --authentication-kubeconfig "$KCFG/scheduler" --authorization-kubeconfig "$KCFG/scheduler" \
    --bind-address 127.0.0.1 --secure-port "$(port_of scheduler)" \
    --leader-elect=false --profiling=false --v 1
  wait_component kube-controller-manager 60 curl -fsSk --max-time 3 \
    "https://127.0.0.1:$(port_of controller-manager)/healthz"
  wait_component kube-scheduler 60 curl -fsSk --max-time 3 "https://127.0.0.1:$(port_of scheduler)/healthz"
  kctl apply -f "$STATE/coredns/rbac.yaml" >/dev/null
}

start_node() {
  node_vars 1
  start_daemon containerd containerd --config "$STATE/containerd/config.toml"
  wait_component containerd 60 ctr_ version
  import_images

  start_daemon coredns "$BIN/coredns" -conf "$STATE/coredns/Corefile"
  wait_component coredns 60 http_ok "http://127.0.0.1:$(port_of coredns-ready)/ready"

  host_dir /var/lib/kubelet  # the kubelet's device-plugin socket (a fixed path)
  start_daemon kubelet "$BIN/kubelet" --config "$STATE/kubelet/config.yaml" \
    --kubeconfig "$KCFG/kubelet" --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  start_daemon kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml" --v 1
  wait_component kube-proxy 60 http_ok "http://127.0.0.1:$(port_of kube-proxy-healthz)/healthz"
  wait_component kubelet 120 kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

start_extra_node() {  # node k >= 2 (node_vars K first)
  local ns=(nsenter --mount="$N_DIR/ns/mnt" --net="/run/netns/$N_NETNS" --)
  echo "$N_K" > "$N_DIR/index"
  setup_node_cgroups
  setup_node_net
  setup_node_mounts
  start_daemon "containerd@$N_NAME" "${ns[@]}" containerd --config "$N_DIR/containerd/config.toml"
  wait_component "containerd@$N_NAME" 60 ctr_ version
  import_images
  start_daemon "kubelet@$N_NAME" "${ns[@]}" "$BIN/kubelet" --config "$N_DIR/kubelet/config.yaml" \
    --kubeconfig "$N_KUBECONFIG" --root-dir "$N_DIR/kubelet/root" --cert-dir "$N_DIR/kubelet/pki" \
    --hostname-override "$N_NAME" --node-ip "$N_IP" --v 1
  start_daemon "kube-proxy@$N_NAME" "${ns[@]}" "$BIN/kube-proxy" --config "$N_DIR/kube-proxy.yaml" --v 1
  wait_component "kube-proxy@$N_NAME" 60 in_node curl -fsS --max-time 3 -o /dev/null \
    "http://127.0.0.1:$(ports_of_node kube-proxy-healthz)/healthz"
  wait_component "kubelet@$N_NAME" 120 kctl wait --for=condition=Ready "node/$N_NAME" --timeout=2s
}

deploy_stack() {
  local restart=""
  # New images under the same tags (IfNotPresent): running Pods keep the old ones unless restarted.
  if [ -n "${IMPORTED:-}" ] && kctl -n elasticserving-system get deployment elasticserving-controller >/dev/null 2>&1; then
    restart=1
  fi
  kctl apply -f "$REPO/deploy/" >/dev/null
  if [ -n "$restart" ]; then
    log "images changed: restarting the controller and the activator"
    kctl -n elasticserving-system rollout restart deployment/elasticserving-controller deployment/elasticserving-activator >/dev/null
  fi
  log "applied deploy/; waiting for the controller and the activator"
  kctl -n elasticserving-system rollout status deployment/elasticserving-controller --timeout=300s >&2
  kctl -n elasticserving-system rollout status deployment/elasticserving-activator --timeout=300s >&2
  wait_until 120 "a controller leading (its endpoint published)" leader_published || exit 1
}

leader_published() {  # the leader's Pod IP is the elasticserving-autoscaler Service's endpoint
  local ip
  ip="$(kctl -n elasticserving-system get endpointslice elasticserving-autoscaler-leader \
        -o jsonpath='{.endpoints[0].addresses[0]}' 2>/dev/null)"
  [ -n "$ip" ]
}

activator_url() {
  local port
  port="$(kctl -n elasticserving-system get service elasticserving-activator \
          -o jsonpath='{.spec.ports[?(@.name=="http")].nodePort}')"
  [ -n "$port" ] || die "the activator Service has no NodePort"
  echo "http://127.0.0.1:$port"
}

all_components() {  # every component of every node set up, in start order
  local k c
  printf '%s\n' "${COMPONENTS[@]}"
  for k in $(extra_nodes); do
    for c in containerd kubelet kube-proxy; do echo "$c@$NODE_NAME-$k"; done
  done
}

cmd_up() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (iptables, mounts, network namespaces)"
  local t0 c k stale=""
  t0=$(date +%s)
  [[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "--nodes wants a number from 1 to 99, not '$NODES'"
  mkdir -p "$STATE" "$LOGS" "$RUN"
  # A dead component of node 1 (the control plane's) means a half-dead cluster: start from scratch. A
  # dead node k >= 2 is started again below (it rejoins).
  for c in "${COMPONENTS[@]}"; do
    if [ -f "$RUN/$c.pid" ] && ! running "$c"; then stale=1; fi
  done
  if [ -n "$stale" ]; then
    log "a previous node died half-way: cleaning up first"
    cmd_down
    mkdir -p "$STATE" "$LOGS" "$RUN"
  fi
  install_packages
  build_binaries
  gen_pki
  gen_config
  for (( k = 1; k <= NODES; k++ )); do node_vars "$k"; gen_node_config; done
  setup_host
  start_control_plane
  start_node
  for (( k = 2; k <= NODES; k++ )); do node_vars "$k"; start_extra_node; done
  if [ -z "${CLUSTER_SKIP_DEPLOY:-}" ]; then
    deploy_stack
  fi
  log "$NODES node(s) Ready in $(( $(date +%s) - t0 ))s; KUBECONFIG=$ADMIN_KUBECONFIG"
  if [ -z "${CLUSTER_SKIP_DEPLOY:-}" ]; then
    echo "activator: $(activator_url)"
  fi
}

# ---- down ------------------------------------------------------------------------------------------
our_netns() {  # network namespaces of our Pod sandboxes (from containerd's sandbox specs)
  running containerd || return 0
  local id
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
try:
    spec = json.load(sys.stdin).get("Spec") or {}
except ValueError:
    sys.exit(0)
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path"):
        print(ns["path"])'
  done | sort -u
}

drain_pods() {  # let the kubelets stop every Pod (CNI DEL, unmounts) before they stop themselves
  running kube-apiserver && running kubelet && running containerd || return 0
  kctl get --raw /readyz >/dev/null 2>&1 || return 0
  local k
  for k in $(extra_nodes); do kctl cordon "node/$NODE_NAME-$k" >/dev/null 2>&1 || true; done
  kctl cordon "node/$NODE_NAME" >/dev/null 2>&1 || true
  log "stopping all Pods"
  kctl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  wait_until 60 "Pods stopped" no_running_tasks || true
}

no_running_tasks() {  # on any node
  local tasks k
  for k in 1 $(extra_nodes); do
    node_vars "$k"
    running "$(containerd_of)" || continue
    tasks="$(ctr_ tasks ls 2>/dev/null | awk 'NR > 1 { print $3 }')"
    ! grep -q RUNNING <<<"$tasks" || return 1
  done
}

containerd_of() { if [ "$N_K" -eq 1 ]; then echo containerd; else echo "containerd@$N_NAME"; fi; }

kill_pod_processes() {  # whatever still runs in the current node's Pod cgroups, and its shims
  local procs pid
  while IFS= read -r procs; do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$procs"
  done < <(find /sys/fs/cgroup/*"$N_CGROUP_ROOT"/kubepods -name cgroup.procs 2>/dev/null)
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $N_SOCK( |$)" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

remove_cgroups() {  # the current node's kubepods hierarchy (deepest first), node k's cgroup root too
  local h
  for h in $(cgroup_hierarchies); do
    [ -d "$h$N_CGROUP_ROOT/kubepods" ] && find "$h$N_CGROUP_ROOT/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -n "$N_CGROUP_ROOT" ] && [ -d "$h$N_CGROUP_ROOT" ] && find "$h$N_CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

forget_containers() {  # the current node's containerd forgets its stopped containers (no snapshot stays mounted)
  local c
  running "$(containerd_of)" || return 0
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete --force "$c" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
}

stop_extra_node() {  # node k's daemons and Pods (node_vars K first); its namespaces go in remove_extra_node
  stop_daemon "kube-proxy@$N_NAME"
  stop_daemon "kubelet@$N_NAME"
  kill_pod_processes
  forget_containers
  stop_daemon "containerd@$N_NAME"
  kill_pod_processes
}

remove_extra_node() {  # after unmount_state: its network namespace (veths, bridge), route, cgroups
  ip netns delete "$N_NETNS" 2>/dev/null || true
  ip link delete "$N_HOST_VETH" 2>/dev/null || true
  ip route del "$N_CIDR" 2>/dev/null || true
  remove_cgroups
  rm -rf "$N_DIR/kubelet/root" "$N_DIR/kubelet/pod-logs" "$N_DIR/cni/ipam" "$N_DIR/containerd/state" \
         "$N_DIR/ns" "$N_DIR/index"
}

unmount_state() {  # every mount under the state dir, deepest first
  local m
  for m in $(awk -v s="$STATE/" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

sweep_daemons() {  # node daemons no pid file names (an `up` killed halfway): our binaries naming the state dir
  local d pid cmd exe
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    cmd="$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" || continue
    exe="${cmd%% *}"
    exe="${exe##*/}"
    [[ "$cmd" == *"$STATE/"* ]] || continue
    [[ " ${COMPONENTS[*]} " == *" $exe "* || "$exe" == containerd-shim* ]] || continue
    log "stopping a leftover $exe (pid $pid) that no pid file named"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

cmd_down() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  mkdir -p "$RUN"
  local netns=() ns k extra
  extra="$(extra_nodes)"
  # Nothing creates Pods from here on; the kubelets then stop the ones there are.
  stop_daemon kube-controller-manager
  stop_daemon kube-scheduler
  drain_pods
  for k in $extra; do node_vars "$k"; stop_extra_node; done
  node_vars 1
  mapfile -t netns < <(our_netns)
  stop_daemon kube-proxy
  stop_daemon kubelet
  kill_pod_processes
  stop_daemon coredns
  stop_daemon kube-apiserver
  stop_daemon etcd
  forget_containers
  stop_daemon containerd
  kill_pod_processes
  sweep_daemons
  unmount_state
  for k in $extra; do node_vars "$k"; remove_extra_node; done
  node_vars 1
  for ns in "${netns[@]}"; do
    [ -e "$ns" ] || continue
    ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; } || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    # veths left by killed sandboxes go with their netns; the bridge is ours to remove
    ip link delete "$BRIDGE" 2>/dev/null || true
  fi
  rm -f "$RUN/bridge"
  if [ -x "${BIN:-$REPO/.cache/bin}/kube-proxy" ]; then
    "${BIN:-$REPO/.cache/bin}/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  iptables_cleanup
  restore_sysctls
  remove_cgroups
  # /var/log/containers links of our Pods (the kubelet's fixed path)
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  # Host dirs that only `up` made (/var/lib/kubelet: the kubelets' device-plugin sockets)
  if [ -f "$STATE/host-dirs" ]; then
    while IFS= read -r d; do [ -n "$d" ] && rm -rf "$d"; done < "$STATE/host-dirs"
    rm -f "$STATE/host-dirs"
  fi
  # Cluster state goes; images (containerd's content), binaries, PKI and logs stay for the next `up`.
  rm -rf "$STATE/etcd" "$STATE/kubelet/root" "$STATE/kubelet/pod-logs" "$STATE/cni/ipam" \
         "$STATE/containerd/state" "$STATE/apiserver-certs" "$RUN"
  log "down"
}

# ---- a node's death (tests/cluster/test_08d_node_loss.py) ------------------------------------------
cmd_kill_node() {  # kill-node K: node K >= 2 loses power: its daemons, shims and Pods SIGKILLed at once
  [[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 2 ] || die "kill-node wants a node number >= 2"
  node_vars "$NODES"
  [ -f "$N_DIR/index" ] || die "no node $N_NAME"
  local c pid freezer="/sys/fs/cgroup/freezer$N_CGROUP_ROOT/kubepods"
  # Power goes at once for every Pod: frozen first (cgroup v1 freezer), SIGKILLed while frozen, thawed
  # to die together. Killed one by one, its replicas died up to ~0.3 s apart on a busy machine, and a
  # client whose request had just failed on the first could be sent to the second before it died.
  if [ -f "$freezer/freezer.state" ]; then
    echo FROZEN > "$freezer/freezer.state"
    wait_until 10 "the Pods of $N_NAME frozen" grep -qx FROZEN "$freezer/freezer.state" || true
  fi
  for c in kube-proxy kubelet containerd; do
    if pid="$(pid_of "$c@$N_NAME")"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  kill_pod_processes
  if [ -f "$freezer/freezer.state" ]; then echo THAWED > "$freezer/freezer.state"; fi
  log "killed $N_NAME; \`scripts/cluster.sh up --nodes N\` starts it again"
}

# ---- status ----------------------------------------------------------------------------------------
cmd_status() {
  local c
  for c in $(all_components); do
    if running "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: stopped"; fi
  done
  if running kube-apiserver; then
    kctl get nodes 2>/dev/null || true
  fi
}

# One `up`, `down` or `kill-node` at a time per state dir: an `up` still running when another command
# started left daemons that no pid file names, which the next `down` could not stop. The lock is held by
# flock(1) around this script (-o: the daemons it starts do not inherit it), beside the state dir so that
# nothing naming the state dir holds it (cmd_down's sweep).
case "${1:-}" in
  up|down|kill-node)
    if [ -z "${CLUSTER_SH_LOCKED:-}" ]; then
      mkdir -p "$(dirname "$STATE")"
      if ! flock -n "$STATE.lock" true; then
        log "waiting for another scripts/cluster.sh on $STATE to finish"
      fi
      rc=0
      CLUSTER_SH_LOCKED=1 flock -o -w 1800 -E 75 "$STATE.lock" "$0" "$@" || rc=$?
      [ "$rc" -ne 75 ] || die "another scripts/cluster.sh on $STATE still runs after 1800s"
      exit "$rc"
    fi ;;
esac

NODES=1
case "${1:-}:${2:-}" in
  up:--nodes) NODES="${3:-}" ;;
  up:--nodes=*) NODES="${2#--nodes=}" ;;
  kill-node:*) NODES="${2:-}" ;;
  *:) ;;
  *) die "unknown option '$2' (up takes --nodes N)" ;;
esac

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  kill-node) cmd_kill_node ;;
  status) cmd_status ;;
  env) echo "export KUBECONFIG=$ADMIN_KUBECONFIG" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
