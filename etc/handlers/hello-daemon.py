#!/usr/bin/python3
# A long-running daemon written for socket activation, as rinetd's supervised services (and
# systemd) start it: the listening socket is fd 3 (LISTEN_FDS=1), and it says READY=1 on
# $NOTIFY_SOCKET once it can serve. It answers each connection with one line.
import os
import socket

listener = socket.socket(fileno=3)
notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    address = "\0" + notify[1:] if notify.startswith("@") else notify
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.sendto(b"READY=1\nSTATUS=answering", address)
while True:
    connection, _ = listener.accept()
    with connection:
        connection.sendall(b"hello from the daemon, pid %d\n" % os.getpid())
