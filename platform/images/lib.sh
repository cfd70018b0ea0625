# Shell helpers for scenarios and the init scripts, at /hdm/lib.sh in every
# domain's initramfs. Scenarios start with `. /hdm/lib.sh`.
#
# Environment a scenario runs with:
#   HDM_DOMAIN  the domain's name: dom0, or the name given in `# hdm: domains`
#   HDM_TYPE    dom0, pv or pvh
#   HDM_PHASE   main (every domain), final (dom0 only, after the domUs ended)
#   HDM_ROLE    the role the modules must log: "dom0 PV", "domU PV", "domU PVH"

HDM_MODDIR=/hdm/modules

# Marker lines the VM test runner reads: `@@HDM <event> <domain> [detail]`.
hdm_mark() { echo "@@HDM $*"; }

# Kernel messages printed straight to the console by printk can land in
# the middle of a line user space is writing there (a marker, a streamed
# guest line). So only emergencies go to the console directly; the rest is
# copied from /proc/kmsg by a user-space reader, one whole line per write.
hdm_forward_kmsg() {
    # What /proc/kmsg holds now was printed on the console during boot:
    # drain it first (a read blocks when it is empty), then lower the level.
    cat /proc/kmsg >/dev/null 2>&1 &
    local drain=$!
    sleep 1
    kill "$drain" 2>/dev/null
    wait "$drain" 2>/dev/null
    dmesg -n 1
    (while IFS= read -r l; do echo "${l#<*>}"; done </proc/kmsg) &
}

# Let the kmsg reader catch up before a marker that closes a step.
hdm_settle() { sleep 1; }

# Log a line of the scenario (it shows in the domain's log).
hdm_log() { echo "hdm[$HDM_DOMAIN]: $*"; }

# Stop the scenario with a failure message.
hdm_fail() { echo "hdm[$HDM_DOMAIN]: FAIL: $*"; exit 1; }

# hdm_insmod NAME [PARAM=VALUE...]: load one of our modules.
hdm_insmod() {
    local m=$1
    shift
    insmod "$HDM_MODDIR/$m.ko" "$@" || hdm_fail "insmod $m failed"
    hdm_log "loaded $m"
}

# hdm_rmmod NAME: unload one of our modules.
hdm_rmmod() {
    rmmod "$1" || hdm_fail "rmmod $1 failed"
    hdm_log "unloaded $1"
}

# hdm_expect_dmesg TEXT: the kernel log must contain TEXT (fixed string).
hdm_expect_dmesg() {
    dmesg | grep -qF -- "$1" || hdm_fail "kernel log lacks: $1"
    hdm_log "kernel log has: $1"
}

# hdm_role_of TYPE: the role string the modules log in a domain of TYPE.
hdm_role_of() {
    case $1 in
    dom0) echo "dom0 PV" ;;
    pv) echo "domU PV" ;;
    pvh) echo "domU PVH" ;;
    *) echo "unknown" ;;
    esac
}

# hdm_cmdline KEY: the value of KEY=VALUE on the kernel command line.
hdm_cmdline() {
    local w
    for w in $(cat /proc/cmdline); do
        case $w in "$1"=*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}

# hdm_header FILE KEY: the values of `# hdm: KEY = VALUE` lines of a scenario.
hdm_header() {
    sed -n "s/^# hdm: *$2 *= *//p" "$1"
}
