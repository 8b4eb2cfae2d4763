#!/bin/sh
# A whole network service in one line: rinetd gives us the connection as stdin/stdout.
echo "hello from rinetd (service $RINETD_SERVICE, pid $$)"
