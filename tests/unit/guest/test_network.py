"""The guest's network commands, computed from UpdateNetwork (no root, no guest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.guest.network import guest_links, hosts_file, ip_batch, resolv_conf
from cocoon.wire import agent as w

REQ = w.UpdateNetworkRequest(
    interfaces=[w.Interface("eth0", "AA:BB:CC:00:00:01", 1450, [w.IPAddress("10.88.0.5", 16)])],
    routes=[
        w.Route("", "10.88.0.1", "eth0"),
        w.Route("10.88.0.0/16", "", "eth0", "10.88.0.5", "link"),
        w.Route("", "fd00::1", "eth0", family=6),
    ],
    neighbors=[w.ARPNeighbor("10.88.0.1", "aa:bb:cc:00:00:fe", "eth0")],
)


def test_batch_renames_configures_routes_then_neighbours() -> None:
    assert ip_batch(REQ, {"aa:bb:cc:00:00:01": "enp0s3"}) == [
        "link set dev enp0s3 down",
        "link set dev enp0s3 name cocoon-tmp0",
        "link set dev cocoon-tmp0 name eth0",
        "link set dev eth0 mtu 1450 up",
        "address replace 10.88.0.5/16 dev eth0",
        "route replace 10.88.0.0/16 dev eth0 src 10.88.0.5 scope link",
        "route replace default via 10.88.0.1 dev eth0",
        "route replace ::/0 via fd00::1 dev eth0",
        "neigh replace 10.88.0.1 lladdr aa:bb:cc:00:00:fe dev eth0 nud permanent",
    ]


def test_no_rename_when_the_name_matches() -> None:
    lines = ip_batch(REQ, {"aa:bb:cc:00:00:01": "eth0"})
    assert not any("name" in ln for ln in lines)


def test_missing_nic_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no guest NIC has MAC AA:BB:CC:00:00:01 \(for eth0\)"):
        ip_batch(REQ, {})


def test_guest_links_by_mac(tmp_path: Path) -> None:
    for name, mac in (("lo", "00:00:00:00:00:00"), ("eth0", "AA:BB:CC:00:00:01")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    assert guest_links(str(tmp_path)) == {"aa:bb:cc:00:00:01": "eth0"}


def test_name_files() -> None:
    assert resolv_conf(["10.0.0.1", "search example.com", ""]) == (
        "nameserver 10.0.0.1\nsearch example.com\n"
    )
    assert "127.0.1.1\tpod1" in hosts_file("pod1")


def test_net_sysctls_are_the_guests(tmp_path: Path) -> None:
    from cocoon.guest.network import apply_net_sysctls

    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    linux = {"sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "4096"}}
    apply_net_sysctls(linux, str(tmp_path))
    assert (tmp_path / "net/ipv4/ip_forward").read_text() == "1"
    assert linux["sysctl"] == {"kernel.shmmax": "4096"}
    joined = {
        "namespaces": [{"type": "network", "path": "/proc/1/ns/net"}],
        "sysctl": {"net.ipv4.ip_forward": "0"},
    }
    apply_net_sysctls(joined, str(tmp_path))
    assert (tmp_path / "net/ipv4/ip_forward").read_text() == "0" and joined["sysctl"] == {}
    # A container with a network namespace of its own keeps them for crun.
    own = {"namespaces": [{"type": "network"}], "sysctl": {"net.ipv4.ip_forward": "1"}}
    apply_net_sysctls(own, str(tmp_path / "nowhere"))
    assert own["sysctl"] == {"net.ipv4.ip_forward": "1"}
