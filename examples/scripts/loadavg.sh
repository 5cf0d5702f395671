#!/bin/sh
# Reports the machine's load averages and uptime. A command actor: any program, not only
# Python, with the same contract as a script -- one JSON document in on stdin, one out on stdout.
cat > /dev/null  # the input: this actor needs none of it
read -r load1 load5 load15 _ < /proc/loadavg
read -r uptime _ < /proc/uptime
printf '{"load1": %s, "load5": %s, "load15": %s, "uptime_s": %s}\n' \
    "$load1" "$load5" "$load15" "${uptime%.*}"
