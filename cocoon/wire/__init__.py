"""Wire schemas shared by the host and the guest (standard library only)."""
