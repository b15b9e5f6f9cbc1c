"""Connect to the unix stream socket argv[1], send nothing, and print what the
server says within 5 s (the control socket answers a non-root peer and hangs up)."""
import socket
import sys

s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
print(s.recv(4096).decode())
