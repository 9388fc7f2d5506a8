#!/bin/bash
# Debian 12 root file systems for the end-to-end tests.
#
#   packaging/rootfs.sh base          build the cached base once (reused while its stamp matches)
#   packaging/rootfs.sh copy DEST     ensure the base, then make a throwaway working copy at DEST
#
# The base is a minimal debootstrapped bookworm (--variant=minbase) with only what the harness
# needs to boot it under systemd-nspawn (systemd, systemd-sysv, dbus) and PostgreSQL (a "main"
# cluster that starts on boot). Nothing else: everything db-backup needs at run time (python3,
# postgresql-client, ...) must come from the Depends: of the .deb, which apt resolves from the
# mirror when a test installs it, so an undeclared dependency fails in this tier as it would on
# a minimal host. Tests never touch the base: they boot a copy.
#
# Environment:
#   DB_BACKUP_E2E_CACHE    cache directory (default /var/cache/db-backup-e2e); the base is
#                          $DB_BACKUP_E2E_CACHE/rootfs-base
#   DB_BACKUP_E2E_ROOTFS   the base's path, when it should live somewhere else
#   DB_BACKUP_E2E_MIRROR   Debian mirror (default: the one the host's apt uses)
set -euo pipefail

CACHE=${DB_BACKUP_E2E_CACHE:-/var/cache/db-backup-e2e}
BASE=${DB_BACKUP_E2E_ROOTFS:-$CACHE/rootfs-base}
SUITE=bookworm
# Bump when the recipe below changes, so cached bases built by an older recipe are rebuilt.
RECIPE=7
# The mirror is plain http (apt verifies signatures), so not even ca-certificates is needed.
INCLUDE=systemd,systemd-sysv,dbus
EXTRA_PACKAGES=(postgresql)
# Downloaded into apt's cache but NOT installed: what installing the .deb pulls in through its
# Depends (python3) and what a test adds (sudo), so that each container's `apt-get install` does
# not fetch them again. A Depends missing from the .deb still leaves them uninstalled.
PREFETCH=(python3 sudo)

log() { printf 'rootfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and systemd-nspawn need it)"

ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        # Wait for the dpkg lock rather than fail: build-deb.sh may be installing build deps.
        local apt_install=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
        DEBIAN_FRONTEND=noninteractive "${apt_install[@]}" "${missing[@]}" >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
                 "${apt_install[@]}" "${missing[@]}" >&2; }
    fi
}

# Print the first Debian (non-security) mirror URI in the host's apt sources, deb822 or one-line.
host_mirror() {
    local uri
    uri=$(awk '
        /^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }
        /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i !~ /security/) { print $i; exit } }
    ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

stamp_value() { printf 'recipe=%s suite=%s include=%s extra=%s prefetch=%s\n' "$RECIPE" "$SUITE" "$INCLUDE" "${EXTRA_PACKAGES[*]}" "${PREFETCH[*]}"; }

build_base() {
    local mirror
    mirror=${DB_BACKUP_E2E_MIRROR:-$(host_mirror)}
    mkdir -p "$(dirname "$BASE")"
    tmp=$(mktemp -d "$BASE.tmp.XXXXXX")  # global: the EXIT trap needs it
    # A failed build leaves nothing that looks like a good base.
    trap 'rm -rf --one-file-system "$tmp"' EXIT
    # mktemp makes it 0700; as the container's / that would lock out every user but root.
    chmod 0755 "$tmp"

    log "debootstrap $SUITE from $mirror into $tmp"
    local t0=$SECONDS
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$mirror" >&2
    log "debootstrap took $((SECONDS - t0)) s"

    # Nothing may start services while we install into the tree: there is no init running here.
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 0755 "$tmp/usr/sbin/policy-rc.d"

    # systemd-nspawn without --boot gives the package scripts a real /proc, /dev/shm and /run,
    # which initdb (run by postgresql's postinst to create the "main" cluster) wants.
    t0=$SECONDS
    # --register=no --keep-unit: the host has no systemd/machined to register a scope with.
    systemd-nspawn --quiet --register=no --keep-unit --pipe -D "$tmp" -E DEBIAN_FRONTEND=noninteractive \
        /bin/sh -ec "apt-get update -q && apt-get install -y -q --no-install-recommends ${EXTRA_PACKAGES[*]} && apt-get clean
                     apt-get install -y -q --no-install-recommends --download-only ${PREFETCH[*]}" >&2
    log "installing ${EXTRA_PACKAGES[*]} (and downloading ${PREFETCH[*]}) took $((SECONDS - t0)) s"
    # postgresql's postinst only warns when it cannot create the cluster; a base without one
    # would make every test fail later in a confusing way.
    compgen -G "$tmp/etc/postgresql/*/main/postgresql.conf" >/dev/null \
        || die "PostgreSQL's main cluster was not created in the base (see the output above)"
    # The point of a minimal base: the .deb's Depends (or a test) must install these.
    local absent
    for absent in usr/bin/python3 bin/kill usr/bin/sudo; do
        [[ ! -e $tmp/$absent ]] || die "/$absent is installed in the base, which must stay minimal"
    done

    # The containers share the host's network: PostgreSQL in two containers (or one container
    # and the host) would fight over 127.0.0.1:5432. Unix socket only; db-backup connects
    # through /var/run/postgresql anyway.
    local conf
    for conf in "$tmp"/etc/postgresql/*/main/postgresql.conf; do
        printf "\n# db-backup e2e: containers share the host network\nlisten_addresses = ''\n" >>"$conf"
    done

    rm -f "$tmp/usr/sbin/policy-rc.d"
    # Each booted copy gets its own transient machine id; the base must not carry one.
    : >"$tmp/etc/machine-id"
    rm -f "$tmp/var/lib/dbus/machine-id"
    echo db-backup-e2e >"$tmp/etc/hostname"

    stamp_value >"$tmp/.db-backup-e2e-stamp"
    rm -rf --one-file-system "$BASE"
    mv "$tmp" "$BASE"
    trap - EXIT
    log "base ready at $BASE"
}

ensure_base() {
    ensure_tools
    if [[ -f $BASE/.db-backup-e2e-stamp && "$(cat "$BASE/.db-backup-e2e-stamp")" == "$(stamp_value)" ]]; then
        log "reusing $BASE"
    else
        # One builder at a time (parallel test sessions share the cache).
        exec 9>"$CACHE.lock"
        flock 9
        if [[ -f $BASE/.db-backup-e2e-stamp && "$(cat "$BASE/.db-backup-e2e-stamp")" == "$(stamp_value)" ]]; then
            log "reusing $BASE"
        else
            build_base
        fi
        exec 9>&-
    fi
}

case ${1:-} in
    base)
        mkdir -p "$CACHE"
        ensure_base
        printf '%s\n' "$BASE"
        ;;
    copy)
        dest=${2:?usage: rootfs.sh copy DEST}
        mkdir -p "$CACHE"
        ensure_base
        [[ ! -e $dest ]] || die "$dest already exists"
        t0=$SECONDS
        cp -a --reflink=auto "$BASE" "$dest"
        rm -f "$dest/.db-backup-e2e-stamp"
        log "copied base to $dest in $((SECONDS - t0)) s"
        printf '%s\n' "$dest"
        ;;
    *)
        echo "usage: $0 base | copy DEST" >&2
        exit 2
        ;;
esac
