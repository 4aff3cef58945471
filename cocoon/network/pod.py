"""One sandbox's pod network: scan, plan, taps, NICs in the VM, guest setup, teardown.

States: NEW → PREPARED (taps and redirects exist, fds held) → ATTACHED (QEMU
has the NICs, the guest is configured) → REMOVED. On ``pc`` the NICs are
hot-plugged over QMP once the VM is up (cold boots and template clones alike:
a template must hold no NIC, its MAC would be in every clone); ``microvm`` has
no hotplug, so there they are on the command line (:meth:`cold_nics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from typing import TYPE_CHECKING

from cocoon.errors import FailedPrecondition, InvalidArgument
from cocoon.hypervisor.cmdline import NicArg
from cocoon.network.plan import NetworkPlan, plan_network

if TYPE_CHECKING:
    from cocoon.agent.client import AgentClient
    from cocoon.hypervisor.qemu import QemuVM

log = logging.getLogger("cocoon.network")


class NetState(enum.Enum):
    NEW = "new"
    PREPARED = "prepared"
    ATTACHED = "attached"
    REMOVED = "removed"


class PodNetwork:
    def __init__(self, netns: str, model: str = "tcfilter", machine: str = "pc") -> None:
        """``netns``: the namespace path to carry ("" = none, loopback only)."""
        self.netns = netns
        self.model = model
        self.machine = machine
        self.state = NetState.NEW
        self.plan = NetworkPlan()
        self._fds: list[int] = []
        self._ns_fd = -1  # held from prepare to teardown: the namespace stays reachable

    @property
    def _ns(self) -> str:
        return f"/proc/self/fd/{self._ns_fd}" if self._ns_fd >= 0 else self.netns

    @property
    def enabled(self) -> bool:
        return bool(self.netns) and self.model != "none"

    async def prepare(self) -> None:
        """Scan the namespace, plan, create taps and redirects; raises CocoonError."""
        if self.state != NetState.NEW:
            return
        if not self.enabled:
            self.state = NetState.PREPARED
            return
        from cocoon.network import tap
        from cocoon.network.netns import in_netns

        try:
            self._ns_fd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgument(f"network namespace {self.netns}", exc) from exc
        snap = await asyncio.to_thread(in_netns, self._ns, tap.scan)
        self.plan = plan_network(snap, f"network namespace {self.netns}")
        for name in self.plan.skipped:
            log.warning("not carried into the VM: %s", name)
        if not self.plan.empty:
            plan = self.plan
            self._fds = await asyncio.to_thread(in_netns, self._ns, lambda: tap.connect(plan))
        log.info(
            "pod network %s: %s", self.netns, ", ".join(n.link for n in self.plan.nics) or "no NIC"
        )
        self.state = NetState.PREPARED

    async def cold_nics(self) -> tuple[NicArg, ...]:
        """Prepare before QEMU starts (a refusal costs no boot); on microvm, the NICs
        for the command line (their fds must be passed), on pc none."""
        await self.prepare()
        if self.machine != "microvm":
            return ()
        return tuple(
            NicArg(n.netdev_id, n.device_id, fd, n.mac)
            for n, fd in zip(self.plan.nics, self._fds, strict=True)
        )

    async def attach(self, vm: QemuVM, agent: AgentClient, hotplug_only: bool = False) -> None:
        """Give the running VM its NICs (pc: hot-plug) and configure the guest.

        ``hotplug_only``: the VM is already up, so microvm (no hotplug) cannot take
        NICs any more; raises FailedPrecondition then.
        """
        await self.prepare()
        if hotplug_only and self.machine == "microvm" and not self.plan.empty:
            raise FailedPrecondition(
                f"{self.netns} was configured after the VM booted, and microvm cannot "
                "hot-plug NICs: use machine_type pc"
            )
        if self.state != NetState.PREPARED:
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if self.machine != "microvm":
            for nic, fd in zip(self.plan.nics, self._fds, strict=True):
                await vm.hotplug_nic(nic.netdev_id, nic.device_id, fd, nic.mac)
        self._close_fds()  # QEMU holds the taps now
        t1 = loop.time()
        if not self.plan.empty:
            # No NIC, nothing to configure: that saves a round trip (~0.15 s under
            # TCG); lo comes up in CreateSandbox either way.
            await agent.update_network(self.plan.guest)
        self.state = NetState.ATTACHED
        if self.plan.nics:
            log.info("NICs plugged in %.3fs, guest configured in %.3fs", t1 - t0, loop.time() - t1)

    async def attach_restored(self, vm: QemuVM, nics: list[tuple[str, str, str, str]]) -> None:
        """A restore: the NICs of the checkpoint, (netdev id, device id, MAC, PCI slot),
        on this namespace's taps, in an incoming VM (the guest is configured already;
        the caller compares ``plan.guest`` with what it had). Raises CocoonError."""
        await self.prepare()
        if len(nics) != len(self.plan.nics):
            raise FailedPrecondition(
                f"the checkpoint has {len(nics)} NIC(s), network namespace "
                f"{self.netns or '(none)'} offers {len(self.plan.nics)}"
            )
        for (netdev, device, mac, addr), fd in zip(nics, self._fds, strict=True):
            await vm.hotplug_nic(netdev, device, fd, mac, addr)
        self._close_fds()
        self.state = NetState.ATTACHED

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    async def teardown(self) -> None:
        """After QEMU is gone: remove redirects and taps, leave the interfaces as found.

        Never raises; what could not be removed is logged.
        """
        if self.state == NetState.REMOVED:
            return
        self._close_fds()
        if self.plan.nics:
            from cocoon.network import tap
            from cocoon.network.netns import in_netns

            try:
                left = await asyncio.to_thread(
                    in_netns, self._ns, lambda: tap.disconnect(self.plan)
                )
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                left = [str(exc)]
            for what in left:
                log.error("pod network teardown: %s", what)
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1
        self.state = NetState.REMOVED


def sweep_recorded(netns: str) -> list[str]:
    """After a sandbox died without teardown: remove its dangling redirects in ``netns``.

    Never raises; returns what could not be cleaned.
    """
    if not netns:
        return []
    from cocoon.network import tap
    from cocoon.network.netns import in_netns

    try:
        cleaned = in_netns(netns, tap.sweep)
    except Exception as exc:  # noqa: BLE001 - cleanup goes on
        return [f"pod network {netns}: {exc}"]
    for name in cleaned:
        log.info("removed the dangling redirect of %s in %s", name, netns)
    return []
