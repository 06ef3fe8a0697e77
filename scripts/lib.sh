# Shared set-up steps for scripts/run and scripts/test, for a fresh Debian 12 machine.
# Each step does nothing when what it ensures is already there.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TETSU_VENV:-$ROOT/.venv}"

log() {
    if [ -t 2 ]; then printf '\033[1m[tetsu]\033[0m %s\n' "$*" >&2; else printf '[tetsu] %s\n' "$*" >&2; fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_updated=""
apt_install() {
    # apt_install PACKAGE... : install the Debian packages that are missing.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$_apt_updated" ]; then
        log "apt-get update"
        as_root apt-get update -qq
        _apt_updated=1
    fi
    log "installing ${missing[*]}"
    # debconf's "delaying package configuration" notes are noise on a machine without apt-utils.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" 2> >(grep -v '^debconf: delaying package configuration' >&2) >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

have_systemd() { [ -d /run/systemd/system ]; }

wait_port() {
    # wait_port PORT SECONDS NAME
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        port_open "$1" && return 0
        sleep 0.5
    done
    log "$3 did not open port $1 within $2 s"
    return 1
}

ensure_python() {
    if ! command -v python3 >/dev/null || ! python3 -c 'import sys; assert sys.version_info >= (3, 11)'; then
        apt_install python3
    fi
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
}

ensure_venv() {
    # ensure_venv [EXTRA]: the project's virtualenv with the locked dependencies.
    ensure_python
    local stamp="$VENV/.tetsu-lock"
    local want
    want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    log "installing the locked Python dependencies (requirements.lock)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.lock"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
    echo "$want" >"$stamp"
}

ensure_rabbitmq() {
    port_open 5672 && return 0
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    port_open 5672 && return 0  # the package may have started it
    log "starting RabbitMQ"
    if have_systemd; then
        as_root systemctl start rabbitmq-server
    else
        as_root rabbitmq-server -detached
    fi
    wait_port 5672 90 RabbitMQ
}

ensure_postgresql() {
    if ! port_open 5432; then
        command -v pg_ctlcluster >/dev/null || apt_install postgresql
        if ! port_open 5432; then
            log "starting PostgreSQL"
            local version
            version="$(ls /etc/postgresql | sort -V | tail -n 1)"
            if have_systemd; then
                as_root systemctl start "postgresql@${version}-main"
            else
                as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
            fi
            wait_port 5432 60 PostgreSQL
        fi
    fi
    # The tests' role and database (password auth over TCP works with Debian's defaults).
    # From /, which the postgres user can enter (it may not enter the checkout).
    (cd / && as_root runuser -u postgres -- psql -qtAX -c \
        "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tetsu') THEN
             CREATE ROLE tetsu LOGIN PASSWORD 'tetsu' CREATEDB; END IF; END \$\$;" >/dev/null)
}

# The bare-metal lab (tests/lab): QEMU guests (TCG) behind virtualbmc BMCs on a userspace
# Open vSwitch, dnsmasq, and what the deploy ramdisk and the test images are built from.
LAB_PACKAGES=(
    qemu-system-x86 ipxe-qemu ipxe libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    libvirt-dev pkg-config gcc python3-dev ipmitool dnsmasq-base openvswitch-switch
    linux-image-cloud-amd64 busybox-static cpio gzip ethtool iproute2 kmod
    syslinux syslinux-common mtools dosfstools fdisk
)
LAB_VENV="${TETSU_LAB_VENV:-$ROOT/.venv-lab}"
VIRTUALBMC_VERSION=3.3.0

ensure_lab() {
    apt_install "${LAB_PACKAGES[@]}"
    # virtualbmc (and libvirt-python, built against libvirt-dev) in a virtualenv of its own:
    # a test tool, not something tetsu runs.
    if [ ! -x "$LAB_VENV/bin/vbmcd" ]; then
        log "installing virtualbmc $VIRTUALBMC_VERSION into $LAB_VENV"
        python3 -m venv "$LAB_VENV"
        "$LAB_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "virtualbmc==$VIRTUALBMC_VERSION"
    fi
}

ensure_browser() {
    # Debian's chromium for the dashboard's browser tests (tests/browser): Playwright
    # drives it (executable_path=/usr/bin/chromium) and never downloads a browser.
    apt_install chromium
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
}

ensure_docker() {
    # A Docker engine and debootstrap, for the `docker compose up` test (its images are
    # built from Debian packages: no image registry is needed). Best effort: where the
    # engine cannot start, that one test is skipped and says why.
    if ! docker info >/dev/null 2>&1; then
        command -v dockerd >/dev/null || apt_install docker.io
    fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    docker info >/dev/null 2>&1 && return 0
    log "starting dockerd"
    if have_systemd; then
        as_root systemctl start docker || true
    else
        as_root sh -c 'nohup dockerd >/var/log/tetsu-dockerd.log 2>&1 &'
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    log "dockerd did not start (see /var/log/tetsu-dockerd.log): the docker compose test will be skipped"
}
