"""Block mode: an engine's /dev/shm bind becomes a guest tmpfs of the same size."""

from __future__ import annotations

from cocoon.storage.share import GUEST_SHARE, shm_mounts_as_tmpfs


def test_the_shm_bind_becomes_a_tmpfs_keeping_its_safety_flags_and_size() -> None:
    src = f"{GUEST_SHARE}/c1/3"
    spec = {
        "mounts": [
            {"destination": "/etc/hosts", "type": "bind", "source": f"{GUEST_SHARE}/c1/2"},
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": src,
                "options": ["bind", "private", "nosuid", "noexec", "nodev"],
            },
        ]
    }
    out = shm_mounts_as_tmpfs(spec, {src: 64 << 20})
    assert out["mounts"][0] == spec["mounts"][0]
    assert out["mounts"][1] == {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={64 << 20}"],
    }
    assert spec["mounts"][1]["type"] == "bind"  # the input is left alone


def test_an_unknown_size_leaves_the_guest_default() -> None:
    src = f"{GUEST_SHARE}/c1/3"
    spec = {"mounts": [{"destination": "/dev/shm", "type": "bind", "source": src}]}
    assert shm_mounts_as_tmpfs(spec, {src: 0})["mounts"][0]["options"] == ["mode=1777"]
