# shellcheck shell=bash
# Shared helpers for scripts/k8s/{build,up,down}. Sourced, not executed.
#
# Everything built or downloaded lives in the cache directory
# (${ZTM_K8S_CACHE:-$HOME/.cache/ztm-k8s}/<version>/), never in the repository.

set -o errexit -o nounset -o pipefail

# ---- pinned versions -------------------------------------------------------
# Kubernetes release built from the Go module proxy (go.mod says go 1.26.0).
K8S_VERSION="${ZTM_K8S_VERSION:-v1.36.3}"
# MCS API module whose config/crd/*.yaml are installed (ServiceExport/Import).
MCS_API_VERSION="${ZTM_MCS_API_VERSION:-v0.5.2}"
# etcd: built from the proxy at the version kubernetes' own go.mod pins
# (go.etcd.io/etcd/server/v3). ZTM_K8S_ETCD=debian uses Debian's etcd-server
# package (3.4.23 on bookworm) instead; see README.md.
ETCD_MODULE="go.etcd.io/etcd/server/v3"
# Optional KWOK (fake nodes that run pods: Running, with pod IPs), built with
# `go install sigs.k8s.io/kwok/cmd/kwok@KWOK_VERSION`; stages = its "fast" set.
KWOK_VERSION="${ZTM_KWOK_VERSION:-v0.8.0}"

K8S_CACHE_ROOT="${ZTM_K8S_CACHE:-${HOME:-/root}/.cache/ztm-k8s}"
K8S_CACHE="$K8S_CACHE_ROOT/$K8S_VERSION"
K8S_BIN="$K8S_CACHE/bin"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

K8S_KWOK_STAGES="$K8S_CACHE/kwok-$KWOK_VERSION-stages-fast.yaml"
K8S_KWOK_FAILED="$K8S_CACHE/kwok-$KWOK_VERSION.failed"

K8S_SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
	echo "k8s: $*" >&2
	exit 1
}

log() {
	echo "k8s: $*" >&2
}

# Go's own settings for everything we run through it.
k8s_go_env() {
	export GOTOOLCHAIN=local
	export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
	export CGO_ENABLED=0
}

k8s_need_cmd() {
	# k8s_need_cmd COMMAND DEBIAN_PACKAGE
	command -v "$1" >/dev/null 2>&1 && return 0
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		log "installing $2 (apt-get) for $1"
		if ! { apt-get install -y -qq "$2" >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null 2>&1; }; }; then
			die "could not apt-get install $2 (needed for $1)"
		fi
	fi
	command -v "$1" >/dev/null 2>&1 || die "$1 not found (install Debian package $2)"
}

k8s_binaries_present() {
	local b
	for b in "${K8S_BINARIES[@]}"; do
		[ -x "$K8S_BIN/$b" ] || return 1
	done
}

# Path of a module in the Go module cache, downloading it if needed.
k8s_go_mod_dir() {
	# k8s_go_mod_dir MODULE VERSION -> prints directory
	local dir
	dir="$(cd "$K8S_CACHE_ROOT" && go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
	[ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1@$2 failed"
	echo "$dir"
}

k8s_go_mod_file() {
	# k8s_go_mod_file MODULE VERSION -> prints path of its go.mod
	local f
	f="$(cd "$K8S_CACHE_ROOT" && go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
	[ -n "$f" ] && [ -f "$f" ] || die "go mod download $1@$2 failed"
	echo "$f"
}

# Build all binaries into $K8S_BIN unless they are already there.
k8s_build() {
	if k8s_binaries_present && { [ "${ZTM_K8S_KWOK:-1}" = 0 ] || k8s_kwok_present || [ -f "$K8S_KWOK_FAILED" ]; }; then
		return 0
	fi
	mkdir -p "$K8S_CACHE_ROOT"
	# Serialise concurrent builds of the same version.
	exec 9>"$K8S_CACHE_ROOT/$K8S_VERSION.lock"
	if command -v flock >/dev/null 2>&1; then
		flock 9
	fi
	k8s_build_k8s
	k8s_build_kwok
	exec 9>&-
}

k8s_kwok_present() {
	[ -x "$K8S_BIN/kwok" ] && [ -s "$K8S_KWOK_STAGES" ]
}

# Best effort: KWOK is optional. A failed build is remembered in
# $K8S_KWOK_FAILED (delete it to retry) so that `up` doesn't retry every time.
k8s_build_kwok() {
	[ "${ZTM_K8S_KWOK:-1}" != 0 ] || return 0
	k8s_kwok_present && return 0
	[ ! -f "$K8S_KWOK_FAILED" ] || return 0
	k8s_need_cmd go golang-go
	k8s_go_env
	local dir started
	started=$(date +%s)
	log "building KWOK $KWOK_VERSION (sigs.k8s.io/kwok/cmd/kwok) into $K8S_BIN (first time only, ~1 min)"
	if ! (cd "$K8S_CACHE_ROOT" && GOBIN="$K8S_BIN" go install -trimpath -ldflags "-s -w" \
		"sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >"$K8S_CACHE/kwok-build.log" 2>&1); then
		cp "$K8S_CACHE/kwok-build.log" "$K8S_KWOK_FAILED"
		log "KWOK build failed (see $K8S_KWOK_FAILED); clusters will have no nodes"
		return 0
	fi
	dir="$(k8s_go_mod_dir sigs.k8s.io/kwok "$KWOK_VERSION")"
	if ! "$K8S_BIN/kubectl" kustomize "$dir/kustomize/stage/fast" >"$K8S_KWOK_STAGES.tmp" 2>>"$K8S_CACHE/kwok-build.log"; then
		cp "$K8S_CACHE/kwok-build.log" "$K8S_KWOK_FAILED"
		log "KWOK stages ($dir/kustomize/stage/fast) failed (see $K8S_KWOK_FAILED); clusters will have no nodes"
		return 0
	fi
	mv -f "$K8S_KWOK_STAGES.tmp" "$K8S_KWOK_STAGES"
	echo "kwok $KWOK_VERSION" >>"$K8S_CACHE/VERSIONS"
	echo "kwok_build_seconds $(($(date +%s) - started))" >>"$K8S_CACHE/VERSIONS"
	return 0
}

k8s_build_k8s() {
	if k8s_binaries_present; then
		return 0
	fi
	k8s_need_cmd go golang-go
	k8s_go_env

	local started src out kmod minor ver staging need have
	started=$(date +%s)
	src="$K8S_CACHE/src"
	out="$src/out"
	rm -rf "$out"
	mkdir -p "$src" "$out" "$K8S_BIN"
	log "building Kubernetes $K8S_VERSION + etcd from the Go module proxy into $K8S_BIN (first time only; ~5-10 min on 2 cores)"

	kmod="$(k8s_go_mod_file k8s.io/kubernetes "$K8S_VERSION")"
	need="$(sed -n 's/^go \([0-9][0-9.]*\)$/\1/p' "$kmod")"
	have="$(go env GOVERSION)"
	have="${have#go}"
	if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
		die "k8s.io/kubernetes $K8S_VERSION needs Go >= $need, this is Go $have"
	fi
	# Staging modules are published as v0.<minor>.<patch>.
	ver="v0.${K8S_VERSION#v1.}"
	staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$kmod" | sort -u)"
	[ -n "$staging" ] || die "no staging replace directives found in $kmod"

	{
		echo "// Generated by scripts/k8s/lib.sh - throwaway module to build Kubernetes binaries."
		echo "module ztm.local/k8s-build"
		echo
		grep -E '^go [0-9]' "$kmod"
		grep -E '^godebug ' "$kmod" || true
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		local m
		for m in $staging; do
			echo "	$m => $m $ver"
		done
		echo ")"
	} >"$src/go.mod"
	cat >"$src/tools.go" <<'EOF'
//go:build tools

// Package tools only records which commands this module builds.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
	rm -f "$src/go.sum"
	(cd "$src" && go mod tidy >"$src/tidy.log" 2>&1) ||
		die "go mod tidy failed for k8s.io/kubernetes $K8S_VERSION (see $src/tidy.log)"

	local etcd_ver
	etcd_ver="$(cd "$src" && go list -m -f '{{.Version}}' "$ETCD_MODULE")"

	# Version stamping, like hack/lib/version.sh does.
	local major="${K8S_VERSION#v}"
	major="${major%%.*}"
	minor="${K8S_VERSION#v*.}"
	minor="${minor%%.*}"
	local date ldflags p
	date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	ldflags="-s -w"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
		ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
	done

	log "go build (log: $src/build.log)"
	if ! (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$out/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl >"$src/build.log" 2>&1); then
		die "go build of Kubernetes $K8S_VERSION failed (see $src/build.log)"
	fi
	local k8s_done
	k8s_done=$(date +%s)
	if ! (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" "$ETCD_MODULE" >>"$src/build.log" 2>&1); then
		die "go build of etcd ($ETCD_MODULE $etcd_ver) failed (see $src/build.log)"
	fi
	local b
	for b in "${K8S_BINARIES[@]}"; do
		[ -x "$out/$b" ] || die "go build produced no $b (see $src/build.log)"
		mv -f "$out/$b" "$K8S_BIN/$b"
	done
	rmdir "$out" 2>/dev/null || true
	{
		echo "kubernetes $K8S_VERSION"
		echo "staging $ver"
		echo "etcd $etcd_ver"
		echo "go $(go env GOVERSION)"
		echo "build_seconds $(($(date +%s) - started))"
		echo "etcd_build_seconds $(($(date +%s) - k8s_done))"
	} >"$K8S_CACHE/VERSIONS"
	k8s_binaries_present || die "build finished but binaries are missing in $K8S_BIN"
	log "built in $(($(date +%s) - started)) s"
}

# ---- processes ---------------------------------------------------------------

# Components in the order they are stopped.
K8S_STOP_ORDER=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

# Is PID alive (not a zombie) and running binary COMPONENT? (guards against
# pid reuse; /proc/PID/comm holds at most 15 characters of the name)
k8s_pid_is() {
	local pid="$1" comp="$2" stat
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[ "${stat%% *}" != Z ] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "${comp:0:15}" ]
}

# Stop every component of every cluster recorded under DIR (pid files
# DIR/*/<component>.pid). Idempotent.
k8s_stop_dir() {
	local dir="$1" comp pidfile pid deadline any
	[ -d "$dir" ] || return 0
	for comp in "${K8S_STOP_ORDER[@]}"; do
		local pids=()
		for pidfile in "$dir"/*/"$comp.pid"; do
			[ -f "$pidfile" ] || continue
			pid="$(cat "$pidfile" 2>/dev/null || true)"
			if k8s_pid_is "$pid" "$comp"; then
				kill -TERM "$pid" 2>/dev/null || true
				pids+=("$pid")
			fi
		done
		[ "${#pids[@]}" -gt 0 ] || { rm -f "$dir"/*/"$comp.pid"; continue; }
		deadline=$(($(date +%s) + 20))
		while :; do
			any=
			for pid in "${pids[@]}"; do
				k8s_pid_is "$pid" "$comp" && any=1
			done
			[ -n "$any" ] || break
			if [ "$(date +%s)" -ge "$deadline" ]; then
				for pid in "${pids[@]}"; do
					k8s_pid_is "$pid" "$comp" && kill -KILL "$pid" 2>/dev/null || true
				done
				sleep 0.5
				break
			fi
			sleep 0.2
		done
		rm -f "$dir"/*/"$comp.pid"
	done
	return 0
}

# Does DIR have any live process recorded?
k8s_dir_running() {
	local dir="$1" comp pidfile
	for comp in "${K8S_STOP_ORDER[@]}"; do
		for pidfile in "$dir"/*/"$comp.pid"; do
			[ -f "$pidfile" ] || continue
			k8s_pid_is "$(cat "$pidfile" 2>/dev/null || true)" "$comp" && return 0
		done
	done
	return 1
}

# ---- CRDs ---------------------------------------------------------------------

# Directory holding the CRD manifests `up` applies: the MCS CRDs copied from the
# sigs.k8s.io/mcs-api module (config/crd/*.yaml, pinned MCS_API_VERSION) plus
# the hand-written ClusterProperty CRD from scripts/k8s/crds/.
K8S_CRDS="$K8S_CACHE/crds/mcs-api-$MCS_API_VERSION"

k8s_fetch_crds() {
	local f dir
	if ! ls "$K8S_CRDS"/multicluster.x-k8s.io_*.yaml >/dev/null 2>&1; then
		k8s_need_cmd go golang-go
		k8s_go_env
		mkdir -p "$K8S_CACHE_ROOT"
		dir="$(k8s_go_mod_dir sigs.k8s.io/mcs-api "$MCS_API_VERSION")"
		ls "$dir"/config/crd/*.yaml >/dev/null 2>&1 ||
			die "sigs.k8s.io/mcs-api@$MCS_API_VERSION has no config/crd/*.yaml"
		rm -rf "$K8S_CRDS.tmp"
		mkdir -p "$K8S_CRDS.tmp"
		cp "$dir"/config/crd/*.yaml "$K8S_CRDS.tmp/"
		chmod 644 "$K8S_CRDS.tmp"/*.yaml
		rm -rf "$K8S_CRDS"
		mv "$K8S_CRDS.tmp" "$K8S_CRDS"
	fi
	# The hand-written CRD always comes from the repository (it may change).
	for f in "$K8S_SCRIPT_DIR"/crds/*.yaml; do
		cmp -s "$f" "$K8S_CRDS/${f##*/}" 2>/dev/null || cp "$f" "$K8S_CRDS/${f##*/}"
	done
	return 0
}
