#!/bin/sh
# SPDX-License-Identifier: MIT
# The long randomized soak (issue 8; `make soak`): dom0 and two PV guests
# each run one `hdmabuf-agent soak` agent that exports random buffers to every
# connected peer and imports and verifies every byte of what the others
# export, for SOAK_SECONDS, while faults drawn from a seed hit them:
#
#   dom0  destroys g1 (`xl destroy`) and creates it again, or SIGKILLs its
#         own agent and starts a new one;
#   g1,g2 SIGKILL their agent and start a new one, or restart their driver
#         (agent killed, every device unbound, counters checked, rmmod,
#         insmod, the devices bind and reconnect, a new agent).
#
# g1 has two devices, to dom0 and to g2 (g2 is its backend, a driver
# domain): so the traffic is dom0<->g1, dom0<->g2 and g1<->g2. g2 is not
# destroyed (g1's device to it would need re-attaching); it restarts its
# driver instead, which g1 and dom0 see as their peer's loss too.
#
# The survivors' agents keep sharing throughout and tolerate only the
# errors docs/driver.md lists for a lost peer, each confirmed by an event
# (tests/agents/src/soak.rs). At the end every agent stops and prints
# its summary; every domain's gauges are back at zero and no request was
# refused (protocol_errors, ring_errors 0) — checked also before each
# driver unload, since the counters start again with the module; no
# xenstore node of any destroyed g1 is left.
#
# The guests are created by this script, not by the runner (like rb in
# xl.sh), because g1 is destroyed and created again: their consoles are
# copied into dom0's log with a `[g1] ` prefix, so the runner judges
# their kernel messages too. PV guests only: a PVH guest running this
# long sometimes triple-faults under QEMU's nested SVM (see cycles.sh).
#
# soak-short.sh runs the same for about a minute (in `make test`).
#
# hdm: description = 20-minute randomized soak: dom0 + 2 PV guests share every way while guests are destroyed, agents killed, drivers restarted
# hdm: timeout = 1800
. /hdm/lib.sh

SOAK_SECONDS=${SOAK_SECONDS:-1200}
# Seconds between two faults of one domain, drawn in [MIN, MAX].
FAULT_MIN=${FAULT_MIN:-20}
FAULT_MAX=${FAULT_MAX:-60}
# Seconds for g2 and g1 to boot and connect before the soak's clock
# starts, and the last seconds without faults (so that a g1 created last
# boots and shares before the agents stop).
SOAK_START=${SOAK_START:-60}
FAULT_TAIL=${FAULT_TAIL:-60}
# The last moment, in seconds before the end, to destroy g1: creating it
# again (about 25 s with its devices) must be done before g2, the backend
# of one of them, ends its soak and powers off at END (on its own clock);
# later, the fault drawn is an agent kill instead. (A g1 destroyed 21 s
# before the end of the one-minute soak failed its creation: g2 was gone.)
RECREATE_BY=${RECREATE_BY:-40}
# The seed of everything random here; the agents' seeds derive from it.
SOAK_SEED=${SOAK_SEED:-20261201}
# Whether g2, the driver domain, restarts its driver (0: it kills its
# agent instead; the draw is the same, so a seed repeats the other
# faults). Unbinding g2's backend device for g1 while dom0 destroys g1
# can meet an upstream xenbus deadlock (docs/security.md, "A hang in a
# driver restart"); the one-minute soak of `make test` is spared it.
BACKEND_RESTARTS=${BACKEND_RESTARTS:-1}
SCENARIO=$(basename "$0")
# The agents' options: buffers up to 4 MiB, an operation that takes over
# 120 s (scaled) fails the run as a hang (under a loaded 2-core host a 4 MiB
# import takes well under a second).
AGENT_OPTS="--max-size 4M --window 4 --status-every 30 --op-timeout $(hdm_limit 120)"

# rand_init SEED / rand N: RAND, a value in [0, N) from a seeded LCG
# (64-bit shell arithmetic), so that a seed repeats the run's faults. A
# variable, not output: $(rand) would run in a subshell, whose state
# change is lost.
rand_init() { RAND_STATE=$1; }
rand() {
    RAND_STATE=$(((RAND_STATE * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff))
    RAND=$(((RAND_STATE >> 33) % $1))
}
# next_fault: NEXT, the time of the next fault.
next_fault() {
    rand $((FAULT_MAX - FAULT_MIN + 1))
    NEXT=$(($(now) + FAULT_MIN + RAND))
}

now() { date +%s; }

# start_agent SEED: an agent until $END, its output in /tmp/agent.N.out
# (copied into the log when it ends); AGENT is its pid.
AGENTS=0
start_agent() {
    local left=$((END - $(now)))
    [ $left -gt 0 ] || left=1
    AGENTS=$((AGENTS + 1))
    AGENT_OUT=/tmp/agent.$AGENTS.out
    # shellcheck disable=SC2086
    hdmabuf-agent soak --seconds $left --seed "$1" $AGENT_OPTS >"$AGENT_OUT" 2>&1 &
    AGENT=$!
    hdm_log "agent $AGENTS started: seed $1, $left s, pid $AGENT"
}

# show_agent: the agent's output, into the log.
show_agent() { sed "s/^/hdm[$HDM_DOMAIN]: agent $AGENTS: /" "$AGENT_OUT"; }

# kill_agent: SIGKILL, the fault a crashing consumer is.
kill_agent() {
    kill -9 "$AGENT" 2>/dev/null
    wait "$AGENT" 2>/dev/null
    show_agent
    hdm_log "agent $AGENTS killed (SIGKILL)"
}

# finish_agent: wait for the agent's own end (by END plus its drain:
# at most 120 s per operation); it must pass. An agent stuck in the
# kernel fails the scenario here with its threads' kernel stacks, before
# the phase's timeout kills everything unreported.
finish_agent() {
    local rc=0 deadline=$((END + 300)) t
    while kill -0 "$AGENT" 2>/dev/null; do
        if [ "$(now)" -gt $deadline ]; then
            show_agent
            for t in /proc/"$AGENT"/task/*; do
                hdm_log "agent $AGENTS thread ${t##*/}: $(cat "$t/wchan" 2>/dev/null) $(tr '\n' ' ' <"$t/stack" 2>/dev/null)"
            done
            hdm_fail "agent $AGENTS did not end by $deadline: $(hdm_stats)"
        fi
        sleep 1
    done
    wait "$AGENT" || rc=$?
    show_agent
    grep -q '^soak summary: pass' "$AGENT_OUT" || {
        # What the driver still holds tells a lost message from a peer
        # that keeps a mapping.
        hdm_log "agent $AGENTS failed: $(hdm_stats)"
        hdm_log "agent $AGENTS failed: rings: $(tr '\n' ' ' </sys/kernel/debug/hyper_dmabuf/rings)"
        hdm_fail "agent $AGENTS failed (exit $rc): $(tail -n 5 "$AGENT_OUT")"
    }
}

# wait_links N SECONDS: until at least N devices are connected (a peer
# may connect or go at any time).
wait_links() {
    local deadline=$(hdm_deadline "$2")
    until [ "$(hdm_stat connections_live)" -ge "$1" ]; do
        hdm_in_time $deadline || hdm_fail "fewer than $1 connections after $2 s: $(hdm_stats)"
        sleep 0.2
    done
    hdm_log "connected: $(hdm_stats)"
}

# no_errors: no request refused, no ring closed, since the module loaded.
no_errors() {
    [ "$(hdm_stat protocol_errors)" = 0 ] || hdm_fail "requests were refused: $(hdm_stats)"
    [ "$(hdm_stat ring_errors)" = 0 ] || hdm_fail "a ring broke: $(hdm_stats)"
}

# unbind_all: unbind every device our drivers have bound.
unbind_all() {
    local bus d n
    for bus in xen xen-backend; do
        for d in /sys/bus/$bus/drivers/hyper_dmabuf/hyper_dmabuf-*; do
            [ -e "$d" ] || continue
            n=$(basename "$d")
            echo -n "$n" >/sys/bus/$bus/drivers/hyper_dmabuf/unbind || hdm_fail "unbind $bus $n"
        done
    done
}

# restart_driver: the fault of a driver that goes away and comes back.
restart_driver() {
    kill_agent
    hdm_watch_stuck "driver restart" 90
    unbind_all
    hdm_wait_stat connections_live 0 60
    hdm_check_released 60
    no_errors
    hdm_log "driver restart: unbound, released: $(hdm_stats)"
    # The last module references (the agent's files, its dma-bufs) go
    # asynchronously after its death.
    # A device the toolstack adds meanwhile (dom0 creating g1 again, with
    # its device on g2) is bound at once and holds the module too: unbind
    # again before each try.
    local deadline=$(hdm_deadline 30)
    until rmmod hyper_dmabuf 2>/tmp/rmmod; do
        hdm_in_time $deadline || hdm_fail "rmmod refused for 30 s: $(cat /tmp/rmmod)"
        sleep 0.2
        unbind_all
    done
    hdm_load
    kill $HDM_STUCK_PID 2>/dev/null
}

# guest_cfg NAME END SEED: the xl config of guest NAME.
guest_cfg() {
    cat /etc/xen/pv.cfg
    echo "name = \"$1\""
    echo "extra = \"console=hvc0 udmabuf.size_limit_mb=2048 hdm.scenario=$SCENARIO hdm.domain=$1 hdm.type=pv hdm.time_scale=$HDM_TIME_SCALE hdm.soak.end=$2 hdm.soak.seed=$3\""
    case $1 in
    g1) echo 'hyper_dmabuf = [ "backend=0, devid=0, rw=1", "backend=g2, devid=1, rw=1" ]' ;;
    g2) echo 'hyper_dmabuf = [ "backend=0, devid=0, rw=1" ]' ;;
    esac
}

# create_guest NAME: create it (seeded by the next draw), its console
# copied into our log; its domid is added to /tmp/domids.
create_guest() {
    rand 1000000
    local seed=$((SOAK_SEED + 1000 * RAND + ${2:-0}))
    guest_cfg "$1" "$END" "$seed" >"/etc/xen/hdm-$1.cfg"
    hdmabuf xl create "/etc/xen/hdm-$1.cfg" >/tmp/create.out 2>&1 ||
        hdm_fail "hdmabuf xl create $1 failed: $(cat /tmp/create.out)"
    echo "$(xl domid "$1")" >>/tmp/domids
    hdm_log "created $1 as domain $(xl domid "$1") (seed $seed)"
}

# follow_console NAME: copy guest NAME's console (every incarnation) here.
follow_console() {
    local log=/var/log/xen/console/guest-$1.log
    : >"$log"
    tail -F -n +1 "$log" 2>/dev/null | while IFS= read -r line; do echo "[$1] $line"; done &
}

# totals FILE...: the sum of every `soak summary` counter in FILEs.
totals() {
    cat "$@" | sed -n 's/.*soak summary: pass seconds=[0-9]* seed=[0-9]* //p' |
        tr ' ' '\n' | awk -F= 'NF == 2 { s[$1] += $2 } END { for (k in s) print k "=" s[k] }' | sort
}

case $HDM_DOMAIN/$HDM_PHASE in
dom0/main)
    hdm_load
    : >/tmp/faults
    : >/tmp/domids
    rand_init "$SOAK_SEED"
    START=$(now)
    # Time for g2 and g1 to boot before the clock starts to matter: every
    # agent stops at END, wherever it started.
    END=$((START + SOAK_START + SOAK_SECONDS))
    hdm_log "soak: seed $SOAK_SEED, $SOAK_SECONDS s of soak after a $SOAK_START s start, faults every $FAULT_MIN-$FAULT_MAX s until $FAULT_TAIL s before the end, ends at $END"
    follow_console g2
    follow_console g1
    create_guest g2 0
    create_guest g1 1
    wait_links 2 240
    start_agent $((SOAK_SEED * 10))
    destroyed=0 killed=0
    next_fault
    # Faults until FAULT_TAIL before the end.
    while [ "$(now)" -lt $((END - FAULT_TAIL)) ]; do
        # A failed agent or guest ends the run now, not at the end.
        kill -0 "$AGENT" 2>/dev/null || finish_agent
        for g in g1 g2; do
            ! grep -q "@@HDM end $g main rc=[1-9]" "/var/log/xen/console/guest-$g.log" ||
                hdm_fail "$g's soak failed: $(grep -E 'FAIL|hdmabuf-agent:' "/var/log/xen/console/guest-$g.log" | tail -n 5)"
        done
        if [ "$(now)" -lt "$NEXT" ]; then
            sleep 1
            continue
        fi
        next_fault
        rand 2
        [ "$RAND" = 1 ] || [ "$(now)" -le $((END - RECREATE_BY)) ] || RAND=1
        case $RAND in
        0)
            old=$(xl domid g1)
            hdm_log "fault: destroying g1 (domain $old): $(hdm_stats)"
            xl destroy g1 ||
                hdm_fail "xl destroy g1 failed; g1 said: $(grep -E 'FAIL|hdmabuf-agent:' /var/log/xen/console/guest-g1.log | tail -n 5)"
            destroyed=$((destroyed + 1))
            # The daemon removes every node the dead domain leaves, ours
            # and g2's backend directory of it.
            hdm_no_nodes "$old" 60
            create_guest g1 "$destroyed"
            ;;
        1)
            hdm_log "fault: killing dom0's agent: $(hdm_stats)"
            kill_agent
            killed=$((killed + 1))
            start_agent $((SOAK_SEED * 10 + killed))
            ;;
        esac
    done
    finish_agent
    # Every guest ends its main phase and powers off.
    deadline=$(($(now) + 300))
    for g in g1 g2; do
        while xl list "$g" >/dev/null 2>&1; do
            [ "$(now)" -le $deadline ] || hdm_fail "$g did not end its soak: $(hdm_stats)"
            sleep 1
        done
    done
    sleep 3
    for g in g1 g2; do
        grep -q "@@HDM end $g main rc=0" "/var/log/xen/console/guest-$g.log" ||
            hdm_fail "$g's soak failed: $(grep -E 'FAIL|hdmabuf-agent:' "/var/log/xen/console/guest-$g.log" | tail -n 5)"
    done
    hdm_wait_stat connections_live 0 60
    hdm_check_released 60
    no_errors
    while read -r id; do hdm_no_nodes "$id" 60; done </tmp/domids
    hdmabuf xl list | grep -q "^no hyper_dmabuf devices" || hdm_fail "devices left: $(hdmabuf xl list)"

    # The figures: every agent that ran to its end, in every domain.
    cat /tmp/agent.*.out /var/log/xen/console/guest-g1.log /var/log/xen/console/guest-g2.log |
        grep 'soak summary: pass' >/tmp/summaries
    restarts=$(cat /var/log/xen/console/guest-g*.log | grep -c 'fault: restarting the driver')
    gkills=$(cat /var/log/xen/console/guest-g*.log | grep -c 'fault: killing the agent')
    hdm_report "soak-summary seed=$SOAK_SEED soak_seconds=$SOAK_SECONDS wall_seconds=$(($(now) - START))"
    hdm_report "soak-summary faults: g1_destroyed=$destroyed dom0_agent_kills=$killed guest_agent_kills=$gkills guest_driver_restarts=$restarts"
    hdm_report "soak-summary agents_finished=$(wc -l </tmp/summaries)"
    for kv in $(totals /tmp/summaries); do hdm_report "soak-summary total $kv"; done
    hdm_report "soak-summary dom0 counters: $(hdm_stats)"
    ;;
g1/main | g2/main)
    hdm_load
    END=$(hdm_cmdline hdm.soak.end)
    seed=$(hdm_cmdline hdm.soak.seed)
    rand_init "$seed"
    hdm_log "soak: ends at $END, now $(now) (seed $seed)"
    # g1's device to g2 connects only while g2's driver is loaded; a
    # connection to dom0 is enough to start.
    wait_links 1 180
    start_agent $((seed * 10))
    next_fault
    n=0
    while [ "$(now)" -lt $((END - FAULT_TAIL)) ]; do
        kill -0 "$AGENT" 2>/dev/null || finish_agent
        if [ "$(now)" -lt "$NEXT" ]; then
            sleep 1
            continue
        fi
        next_fault
        n=$((n + 1))
        rand 2
        case $RAND in
        0)
            hdm_log "fault: killing the agent: $(hdm_stats)"
            kill_agent
            ;;
        1)
            if [ "$HDM_DOMAIN" = g2 ] && [ "$BACKEND_RESTARTS" = 0 ]; then
                hdm_log "fault: killing the agent (no backend restart): $(hdm_stats)"
                kill_agent
            else
                hdm_log "fault: restarting the driver: $(hdm_stats)"
                restart_driver
                wait_links 1 120
            fi
            ;;
        esac
        start_agent $((seed * 10 + n))
    done
    finish_agent
    # Every agent has stopped by END (+ its drain): nothing is shared.
    hdm_check_released 120
    no_errors
    hdm_log "soak: PASS: $(hdm_stats)"
    ;;
esac
