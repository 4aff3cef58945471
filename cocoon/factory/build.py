"""Boot a generic VM and save it as a template.

The template VM is the sandbox's VM without anything of a sandbox: its 9p
device points at an empty directory and is never mounted (so migration is not
blocked and a clone can point it elsewhere), it has no NIC (a clone would
inherit the MAC) and the agent only answers Check. The agent connection is
closed before saving; a clone's host connects afresh and the agent, which
treats "no host" as "wait", carries on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cocoon.agent.client import AgentClient
from cocoon.errors import Unavailable
from cocoon.factory.key import fingerprints, template_argv, template_key
from cocoon.factory.store import MEMORY, STATE, Store, Template, TemplateMeta
from cocoon.hypervisor.cmdline import SharePlan, VMPlan
from cocoon.hypervisor.qemu import QemuVM, describe_exit

log = logging.getLogger("cocoon.factory")
SOCKET_PARENT = Path("/run")  # unix socket paths must stay short


async def build_template(store: Store, plan: VMPlan, boot_timeout: float) -> Template:
    """Boot ``plan`` (its size, ceilings and assets; its paths do not matter) and save it.

    The caller holds the store's lock. Raises CocoonError naming what failed;
    nothing is left behind but the finished template.
    """
    files = fingerprints(plan)
    key = template_key(plan, files)
    store.prune_stale()
    work = store.new_work_dir(key)
    sockets = Path(tempfile.mkdtemp(prefix="cocoon-tmpl-", dir=SOCKET_PARENT))
    (work / "share").mkdir(mode=0o700)
    memory = work / MEMORY
    # Created here, 0600, so that QEMU never picks the mode of a guest's RAM image.
    fd = os.open(memory, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.ftruncate(fd, plan.memory_mib << 20)
    os.close(fd)
    tplan = replace(
        plan,
        qmp_socket=sockets / "qmp.sock",
        agent_socket=sockets / "agent.sock",
        console_log=work / "console.log",
        share=SharePlan("9p", path=work / "share") if plan.share is not None else None,
        memory_file=memory,
        memory_shared=True,
        incoming=False,
    )
    (work / "jail").mkdir(mode=0o700)  # QEMU's chroot: the template VM serves no files
    vm = QemuVM(tplan, work / "qemu.log", work / "jail")
    t0 = time.monotonic()
    try:
        await vm.start()
        agent = await _wait_agent(vm, tplan, boot_timeout)
        boot_seconds = time.monotonic() - t0
        await agent.close()
        t1 = time.monotonic()
        await vm.save_state(work / STATE)
        save_seconds = time.monotonic() - t1
        await vm.stop()
        meta = TemplateMeta(
            key=key,
            vcpus=plan.vcpus,
            memory_mib=plan.memory_mib,
            machine=plan.machine,
            argv=template_argv(plan),
            files=files,
            state_sha256="",
            memory_ino=0,
            memory_size=0,
            memory_ctime_ns=0,
            boot_seconds=round(boot_seconds, 3),
            save_seconds=round(save_seconds, 3),
        )
        for scratch in ("share", "jail", "console.log", "qemu.log"):
            path = work / scratch
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        tmpl = store.publish(work, meta)
        made = (
            f"made template {key[:12]}: {plan.vcpus} vCPU, {plan.memory_mib} MiB, "
            f"boot {boot_seconds:.2f} s, save {save_seconds:.3f} s"
        )
        log.info("%s", made)
        store.record(made)
        return tmpl
    except BaseException:
        await vm.kill()
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


async def _wait_agent(vm: QemuVM, plan: VMPlan, timeout: float) -> AgentClient:
    connect = asyncio.ensure_future(AgentClient.connect(str(plan.agent_socket), timeout))
    died = asyncio.ensure_future(vm.exited.wait())
    done, _ = await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
    if connect in done:
        died.cancel()
        return connect.result()
    connect.cancel()
    raise Unavailable(f"the template VM {describe_exit(vm.exit_code)} before its agent answered")


def check_buildable(plan: VMPlan) -> str:
    """Why a VM of ``plan`` cannot be templated ("" if it can)."""
    if plan.share is not None and plan.share.kind != "9p":
        return "virtio-fs cannot serve private template clones (use shared_fs = virtio-9p)"
    if plan.nics:
        return "a template must not carry NICs: every clone would have their MACs"
    if plan.free_page_reporting:
        # Measured with QEMU 7.2: a clone's reported pages are discarded by
        # punching holes in the RAM file itself, although it is mapped private,
        # which would corrupt the template under every other clone.
        return "reclaim_guest_freed_memory punches holes in a template's RAM file"
    return ""
