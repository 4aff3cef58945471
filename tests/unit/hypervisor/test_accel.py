from __future__ import annotations

from pathlib import Path

from cocoon.hypervisor.accel import kvm_hints

CPU_VMX = "processor: 0\nflags\t\t: fpu vme vmx sse\n"
CPU_NONE = "processor: 0\nflags\t\t: fpu vme sse\n"


def test_missing_device(tmp_path: Path) -> None:
    assert "does not exist" in (kvm_hints(CPU_VMX, tmp_path / "kvm", tmp_path / "pvm") or "")


def test_pvm_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    (tmp_path / "pvm").mkdir()
    assert "PVM" in (kvm_hints(CPU_VMX, tmp_path / "kvm", tmp_path / "pvm") or "")


def test_no_vmx_flag(tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    assert "vmx/svm" in (kvm_hints(CPU_NONE, tmp_path / "kvm", tmp_path / "pvm") or "")


def test_plausible_kvm_needs_a_boot_probe(tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    assert kvm_hints(CPU_VMX, tmp_path / "kvm", tmp_path / "pvm") is None
