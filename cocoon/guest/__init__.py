"""The guest agent: runs as PID 1 in the VM, creates containers with crun.

Imports only the standard library and ``cocoon.wire``/``cocoon.ttrpc``: the
guest image carries Debian's python3 and nothing else.
"""
