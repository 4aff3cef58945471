"""Which kernel modules the guest root image carries (a fake modules.dep)."""

from __future__ import annotations

from cocoon.assets import guestmodules as gm

DEP = """kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/net/wireless/ath/ath9k.ko: kernel/net/mac80211/mac80211.ko
kernel/net/mac80211/mac80211.ko: kernel/net/wireless/cfg80211.ko
kernel/net/wireless/cfg80211.ko:
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/net/veth.ko:
kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko kernel/drivers/misc/helper.ko
kernel/lib/libcrc32c.ko:
kernel/drivers/misc/helper.ko:
"""


def test_modules_dep_is_parsed() -> None:
    deps = gm.parse_modules_dep(DEP)
    assert deps["kernel/net/bridge/bridge.ko"] == ["kernel/net/802/stp.ko", "kernel/net/llc/llc.ko"]
    assert deps["kernel/net/llc/llc.ko"] == []


def test_selection_keeps_what_a_sandbox_uses_and_its_dependencies() -> None:
    chosen = gm.select_modules(gm.parse_modules_dep(DEP))
    assert "kernel/net/bridge/bridge.ko" in chosen and "kernel/net/llc/llc.ko" in chosen
    assert "kernel/fs/overlayfs/overlay.ko" in chosen and "kernel/drivers/net/veth.ko" in chosen
    # A dependency outside the included directories comes along.
    assert "kernel/drivers/misc/helper.ko" in chosen
    # Hardware a VM has not got stays out (and what only it needs).
    assert not any("wireless" in m or "mac80211" in m or "gpu" in m for m in chosen)
    assert chosen == sorted(chosen)


def test_a_directory_prefix_matches_whole_components_only() -> None:
    deps = {"kernel/fsx/a.ko": [], "kernel/fs/b.ko": []}
    assert gm.select_modules(deps, include=("kernel/fs",), exclude=()) == ["kernel/fs/b.ko"]
