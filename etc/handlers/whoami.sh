#!/bin/sh
# The client's address comes in the UCSPI variables, as tcpserver sets them. An IPv6 address
# is written in brackets before its port ([::1]:40000), as in a URL.
address() {
    case $1 in
        *:*) echo "[$1]:$2" ;;
        *) echo "$1:$2" ;;
    esac
}
echo "you are $(address "$TCPREMOTEIP" "$TCPREMOTEPORT"), talking to $(address "$TCPLOCALIP" "$TCPLOCALPORT")"
