# Sourced by scripts/bench/run: the tools the benchmark needs, installed when
# missing, and the helpers it builds, cached outside the repository.
#
#   iperf3, stunnel4, OpenSSH (client and server), openssl, a C compiler:
#     Debian packages, apt-get as root (otherwise a note and those peers skip);
#   rr (scripts/bench/rr.c):   $CACHE/rr-<hash of rr.c>;
#   mcensus (mcensus.c):       $CACHE/mcensus-<hash>.so (--census);
#   frps, frpc:                $CACHE/frp-$FRP_VERSION/, built with the Go
#                              toolchain from the Go module proxy.
#
# Exports ZTM_BENCH_RR, ZTM_BENCH_MCENSUS, and ZTM_BENCH_FRP_BIN or ZTM_BENCH_FRP_SKIP (the reason).
# $BENCH_NEED_PEERS=0 (--quick) skips the peers' tools.

ZTM_BENCH_CACHE=${ZTM_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ztm-bench}
FRP_VERSION=v0.61.1
mkdir -p "$ZTM_BENCH_CACHE"

bench_have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

bench_install() {
  local need=()
  local pair
  for pair in "$@"; do
    bench_have "${pair%%:*}" || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "note: not root, so not installing ${need[*]}; scenarios that need them are skipped" >&2
    return 0
  fi
  echo "installing ${need[*]} (Debian packages)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

bench_setup() {
  local here=$1
  bench_install iperf3:iperf3 cc:gcc
  if [ "${BENCH_NEED_PEERS:-1}" = 1 ]; then
    bench_install stunnel:stunnel4 ssh:openssh-client sshd:openssh-server openssl:openssl ssh-keygen:openssh-client
  fi
  bench_have iperf3 || { echo "iperf3 is required" >&2; return 1; }

  # rr: rebuilt when rr.c changes.
  local sum
  sum=$(sha256sum "$here/rr.c" | cut -c1-12)
  ZTM_BENCH_RR="$ZTM_BENCH_CACHE/rr-$sum"
  if [ ! -x "$ZTM_BENCH_RR" ]; then
    cc -O2 -Wall -pthread -o "$ZTM_BENCH_RR.tmp" "$here/rr.c" && mv "$ZTM_BENCH_RR.tmp" "$ZTM_BENCH_RR"
  fi
  export ZTM_BENCH_RR
  # mcensus (scripts/bench/mcensus.c): the allocation census of --census.
  sum=$(sha256sum "$here/mcensus.c" | cut -c1-12)
  ZTM_BENCH_MCENSUS="$ZTM_BENCH_CACHE/mcensus-$sum.so"
  if [ ! -f "$ZTM_BENCH_MCENSUS" ]; then
    cc -O2 -Wall -shared -fPIC -pthread -o "$ZTM_BENCH_MCENSUS.tmp" "$here/mcensus.c" && mv "$ZTM_BENCH_MCENSUS.tmp" "$ZTM_BENCH_MCENSUS"
  fi
  export ZTM_BENCH_MCENSUS

  unset ZTM_BENCH_FRP_BIN ZTM_BENCH_FRP_SKIP
  if [ "${BENCH_NEED_PEERS:-1}" = 1 ]; then
    local frp="$ZTM_BENCH_CACHE/frp-$FRP_VERSION"
    if [ ! -x "$frp/frps" ] || [ ! -x "$frp/frpc" ]; then
      if ! command -v go >/dev/null 2>&1; then
        export ZTM_BENCH_FRP_SKIP="no Go toolchain to build frp $FRP_VERSION with"
      else
        echo "building frp $FRP_VERSION (once; cached in $frp)" >&2
        # `go install …@version` refuses here: it also asks the proxy for the
        # module's version list (for deprecation notices), which the proxy
        # this machine reaches does not serve. A throwaway module that
        # requires the pinned version builds the same binaries.
        local mod
        mod=$(mktemp -d)
        if (cd "$mod" && go mod init ztm-bench/frp >/dev/null 2>&1 &&
          timeout 600 go get "github.com/fatedier/frp/cmd/frps@$FRP_VERSION" "github.com/fatedier/frp/cmd/frpc@$FRP_VERSION" >"$mod/log" 2>&1 &&
          timeout 600 go build -o "$frp/" github.com/fatedier/frp/cmd/frps github.com/fatedier/frp/cmd/frpc >>"$mod/log" 2>&1); then
          :
        else
          export ZTM_BENCH_FRP_SKIP="building frp $FRP_VERSION failed: $(tail -c 300 "$mod/log" | tr '\n' ' ')"
        fi
        rm -rf "$mod"
      fi
    fi
    if [ -z "${ZTM_BENCH_FRP_SKIP:-}" ]; then export ZTM_BENCH_FRP_BIN="$frp"; fi
  fi
}
