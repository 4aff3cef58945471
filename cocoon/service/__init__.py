"""The per-sandbox service: owns the VM, the fs daemon, the agent link and stdio relays."""
