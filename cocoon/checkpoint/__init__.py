"""Checkpoint and restore of a whole sandbox VM (QEMU's migration stream + disks)."""
