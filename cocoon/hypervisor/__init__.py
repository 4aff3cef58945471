"""The VMM: QEMU command lines (as plain data), the QEMU process and QMP, the accelerator probe."""
