#!/bin/bash
# Build db-backup_<version>_<arch>.deb from this tree for Debian 12 (dh-virtualenv).
#
#   packaging/build-deb.sh [--version X] [--config-note TEXT] [--placeholders] [--lintian] [--out DIR]
#
#   --version X      build as version X: a new debian/changelog entry is written in the build
#                    copy only (the e2e upgrade test uses it); the tree is never modified.
#   --config-note T  append the comment line "# T" to the shipped example config, in the build
#                    copy only: the conffile then differs from the other build's, as it does
#                    between real releases (the e2e upgrade-over-an-edited-config test).
#   --placeholders   create stand-ins, in the build copy only, for source files the package
#                    ships but that do not exist yet (example config, SQL migration, README,
#                    unit files). For development while those are being written; never release.
#   --lintian        run lintian on the result and print its findings.
#   --out DIR        where the .deb goes (default: dist/ at the repository root).
#
# The build runs in a temporary copy of the tree (tracked and untracked-but-not-ignored files;
# never .git, .venv, dist/), so the working tree stays clean while others edit it. The last
# line printed is the path of the .deb.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=""
config_note=""
placeholders=0
run_lintian=0
out="$root/dist"
while (($#)); do
    case $1 in
        --version) version=${2:?--version needs a value}; shift 2 ;;
        --version=*) version=${1#*=}; shift ;;
        --config-note) config_note=${2:?--config-note needs a value}; shift 2 ;;
        --placeholders) placeholders=1; shift ;;
        --lintian) run_lintian=1; shift ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;/^set -e/d'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { printf 'build-deb: %s\n' "$*" >&2; }

# dh-virtualenv must use Debian's python3 (the one the package runs on), not a pyenv or venv
# python that happens to come first on PATH; and no outer virtualenv may leak into the build.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PYENV_VERSION
export DEBIAN_FRONTEND=noninteractive

build_deps=(debhelper dh-virtualenv build-essential python3 python3-dev python3-venv dpkg-dev)
((run_lintian)) && build_deps+=(lintian)
missing=()
for pkg in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || { log "missing build dependencies (run as root to install): ${missing[*]}"; exit 1; }
    log "installing build dependencies: ${missing[*]}"
    # Wait for the dpkg lock rather than fail: the e2e harness may be installing debootstrap.
    apt_install=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    "${apt_install[@]}" "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && "${apt_install[@]}" "${missing[@]}" >&2; }
fi

t0=$SECONDS
work=$(mktemp -d /tmp/db-backup-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/db-backup"
mkdir -p "$src"

# Copy the tree as git sees it (read-only git use), falling back to a plain copy without git.
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | (cd "$root" && while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done) \
        | tar -C "$root" --null -T - -cf - | tar -C "$src" -xf -
else
    tar -C "$root" --exclude=.git --exclude=.venv --exclude=dist --exclude=build \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$src" -xf -
fi

placeholder() {  # placeholder PATH CONTENT: create PATH in the build copy when it is missing
    local path=$1 content=$2
    [[ -e $src/$path ]] && return 0
    if ((placeholders)); then
        log "WARNING: $path is missing; using a placeholder in the build copy"
        mkdir -p "$(dirname "$src/$path")"
        printf '%s\n' "$content" >"$src/$path"
    else
        log "error: $path is missing (use --placeholders for a development build)"
        exit 1
    fi
}
placeholder config.example.yaml "# PLACEHOLDER written by packaging/build-deb.sh --placeholders
jobs: []"
placeholder src/db_backup/sql/V1__create_db_backup_job.sql "-- PLACEHOLDER written by packaging/build-deb.sh --placeholders"
placeholder README.md "# db-backup (PLACEHOLDER written by packaging/build-deb.sh --placeholders)"
placeholder systemd/db-backup.service "# PLACEHOLDER written by packaging/build-deb.sh --placeholders
[Unit]
Description=db-backup daemon (placeholder unit)
After=network-online.target postgresql.service

[Service]
Type=simple
User=postgres
ExecStart=/usr/bin/db-backup daemon

[Install]
WantedBy=multi-user.target"
placeholder 'systemd/db-backup@.service' "# PLACEHOLDER written by packaging/build-deb.sh --placeholders
[Unit]
Description=db-backup one-shot job %i (placeholder unit)

[Service]
Type=oneshot
User=postgres
ExecStart=/usr/bin/db-backup run %i"
placeholder 'systemd/db-backup@.timer' "# PLACEHOLDER written by packaging/build-deb.sh --placeholders
[Unit]
Description=db-backup job %i schedule (placeholder unit)

[Timer]
OnCalendar=daily

[Install]
WantedBy=timers.target"

if [[ -n $version ]]; then
    log "building as version $version"
    {
        printf 'db-backup (%s) bookworm; urgency=medium\n\n' "$version"
        printf '  * Build of version %s made by packaging/build-deb.sh --version.\n\n' "$version"
        printf ' -- %s  %s\n\n' "$(sed -n 's/^Maintainer: //p' "$src/debian/control")" "$(date -R)"
        cat "$src/debian/changelog"
    } >"$src/debian/changelog.new"
    mv "$src/debian/changelog.new" "$src/debian/changelog"
fi

if [[ -n $config_note ]]; then
    log "appending a note to the shipped config: $config_note"
    printf '# %s\n' "$config_note" >>"$src/config.example.yaml"
fi

# The package version comes from debian/changelog; say so when it disagrees with pyproject.toml.
pkg_version=$(cd "$src" && dpkg-parsechangelog -S Version)
py_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
if [[ -n $py_version && ${pkg_version%%[-+~]*} != "$py_version" ]]; then
    log "WARNING: debian/changelog says $pkg_version but pyproject.toml says $py_version" \
        "(add a debian/changelog entry: dch -v $py_version)"
fi

log "dpkg-buildpackage in $src"
(cd "$src" && dpkg-buildpackage -us -uc -b) >&2
log "dpkg-buildpackage took $((SECONDS - t0)) s"

deb=$(find "$work" -maxdepth 1 -name 'db-backup_*.deb' ! -name '*dbgsym*' | head -n1)
[[ -n $deb ]] || { log "error: no .deb was produced"; exit 1; }
mkdir -p "$out"
cp "$deb" "$out/"
deb="$out/$(basename "$deb")"

if ((run_lintian)); then
    log "lintian --display-info --pedantic $deb (any tag that is not overridden fails the build)"
    if ! lintian --display-info --pedantic --fail-on error,warning,info,pedantic "$deb" >&2; then
        log "error: lintian found problems in $deb (see above)"
        exit 1
    fi
fi
printf '%s\n' "$deb"
