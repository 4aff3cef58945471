"""The OCI ``features`` document (runtime-spec ``features.md``) that ``cocoon features`` prints.

What "supported" means here: Cocoon runs every container in its own QEMU VM and hands
the bundle to crun 1.8 inside the guest (Linux 6.1, libseccomp 2.5). Namespaces,
capabilities, mount options, seccomp and the container's cgroup limits are applied by
crun *inside the guest*, against the guest kernel, not against the host. So a listed
namespace isolates the container from the other processes of its VM (the VM already
isolates it from the host), a capability is one of the guest kernel's, and the cgroup
entry describes the guest's cgroup (a pure cgroup2 mount, ``cgroup.v2``) whatever the
host has. Only hooks run on the host (see :mod:`cocoon.oci.hooks`).

Not offered: AppArmor and SELinux (the guest has neither), Intel RDT, systemd cgroup
management (no systemd anywhere), idmapped mounts (the rootfs arrives over virtio-fs or
9p, which the guest kernel cannot idmap), checkpoint/restore.
"""

from __future__ import annotations

from typing import Any

OCI_VERSION_MIN = "1.0.0"
OCI_VERSION_MAX = "1.1.0"

HOOKS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

# crun 1.8.1 src/libcrun/mount_flags.perf (the same table crun 1.8.6 reports), minus
# "idmap" (see the module docstring).
MOUNT_OPTIONS = (
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rasync",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "rdirsync",
    "relatime",
    "remount",
    "rexec",
    "rmand",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnomand",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsync",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
)

# crun 1.8.1 linux.c handles all eight (time when glibc defines CLONE_NEWTIME, as
# Debian 12's does); the guest kernel 6.1 has them all.
NAMESPACES = ("cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts")

# Linux 6.1 include/uapi/linux/capability.h, in bit order (0 .. CAP_LAST_CAP = 40).
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# crun 1.8 src/libcrun/seccomp.c (actions it maps) and the lists crun 1.8.6 reports.
SECCOMP_ACTIONS = (
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
)

SECCOMP_OPERATORS = (
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
)

SECCOMP_ARCHS = (
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
)

# The filter flags crun 1.8.1 parses; the guest kernel 6.1 supports all four.
SECCOMP_FLAGS = (
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
)

ANNOTATIONS = {
    "io.cocoon.vm": "true",
    "org.opencontainers.runc.checkpoint.enabled": "false",
}

# Annotation prefixes that change how the VM is built (kernel, memory, devices).
UNSAFE_ANNOTATION_PREFIXES = ("io.cocoon.config.", "io.katacontainers.config.")


def features_document() -> dict[str, Any]:
    """Return a fresh ``features`` document (callers may mutate it)."""
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": list(HOOKS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(NAMESPACES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": list(SECCOMP_ACTIONS),
                "operators": list(SECCOMP_OPERATORS),
                "archs": list(SECCOMP_ARCHS),
                "knownFlags": list(SECCOMP_FLAGS),
                "supportedFlags": list(SECCOMP_FLAGS),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": dict(ANNOTATIONS),
        "potentiallyUnsafeConfigAnnotations": list(UNSAFE_ANNOTATION_PREFIXES),
    }
