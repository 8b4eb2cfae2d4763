#!/bin/sh
# The client's address comes in the UCSPI variables, as tcpserver sets them.
echo "you are $TCPREMOTEIP:$TCPREMOTEPORT, talking to $TCPLOCALIP:$TCPLOCALPORT"
