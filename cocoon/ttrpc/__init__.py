"""ttRPC: containerd's lightweight RPC protocol, one asyncio implementation.

Three layers, as in QEMU's QMP library: transport (byte streams: a unix socket,
a virtio-serial port) → protocol (:mod:`framing`, :mod:`envelope`,
:mod:`connection`: frames, a reader task, a write lock) → :mod:`client` and
:mod:`server`. Standard library only: the guest agent imports this package.
"""
