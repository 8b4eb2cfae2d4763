#!/bin/sh
# A program without a socket: rinetd restarts it whenever it exits, and each line it writes
# becomes a log line (`ticker/none: stdout pid=… line=…`).
while :; do
    echo "tick $(date +%H:%M:%S)"
    sleep 10
done
