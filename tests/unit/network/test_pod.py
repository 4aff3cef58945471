"""PodNetwork's states without a namespace: what reaches QEMU and the agent (fakes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cocoon.errors import FailedPrecondition
from cocoon.network.plan import NetworkPlan, NicPlan
from cocoon.network.pod import NetState, PodNetwork
from cocoon.wire import agent as w


class Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def hotplug_nic(self, *args: Any) -> None:
        self.calls.append(("hotplug_nic", args))

    async def update_network(self, req: w.UpdateNetworkRequest) -> None:
        self.calls.append(("update_network", req))


@pytest.mark.parametrize(("netns", "model"), [("", "tcfilter"), ("/run/netns/p", "none")])
def test_no_network_costs_no_agent_call(netns: str, model: str) -> None:
    """lo comes up in CreateSandbox: an empty UpdateNetwork would be a wasted round trip."""
    net, fake = PodNetwork(netns, model), Fake()
    assert asyncio.run(net.cold_nics()) == ()
    asyncio.run(net.attach(fake, fake))  # type: ignore[arg-type]
    assert fake.calls == []
    assert net.state == NetState.ATTACHED
    asyncio.run(net.teardown())
    assert net.state == NetState.REMOVED


NIC = NicPlan("eth0", 2, "tap0_cocoon", "aa:bb:cc:00:00:01", 1500, "hostnet0", "net0")


def prepared(machine: str) -> PodNetwork:
    net = PodNetwork("/run/netns/p", "tcfilter", machine)
    net.plan = NetworkPlan((NIC,))
    net._fds = [-1]  # never closed for real: OSError is suppressed
    net.state = NetState.PREPARED
    return net


def test_pc_hot_plugs_then_configures_the_guest() -> None:
    net, fake = prepared("pc"), Fake()
    asyncio.run(net.attach(fake, fake))  # type: ignore[arg-type]
    assert [c[0] for c in fake.calls] == ["hotplug_nic", "update_network"]
    assert fake.calls[0][1] == ("hostnet0", "net0", -1, "aa:bb:cc:00:00:01")


def test_microvm_nics_go_on_the_command_line_not_hotplug() -> None:
    net, fake = prepared("microvm"), Fake()
    (arg,) = asyncio.run(net.cold_nics())
    assert (arg.netdev_id, arg.device_id, arg.mac) == ("hostnet0", "net0", "aa:bb:cc:00:00:01")
    asyncio.run(net.attach(fake, fake))  # type: ignore[arg-type]
    assert [c[0] for c in fake.calls] == ["update_network"]


def test_microvm_cannot_take_a_network_after_boot() -> None:
    net, fake = prepared("microvm"), Fake()
    with pytest.raises(FailedPrecondition, match="cannot hot-plug NICs"):
        asyncio.run(net.attach(fake, fake, hotplug_only=True))  # type: ignore[arg-type]
