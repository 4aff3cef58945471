"""``[runtime] rootfs_mode``: configured, annotated per sandbox, resolved into Settings."""

from __future__ import annotations

import pytest

from cocoon.config.annotations import apply_annotations
from cocoon.config.schema import Config
from cocoon.errors import InvalidArgument

KEY = "io.cocoon.config.runtime.rootfs_mode"


def test_default_is_the_share_and_an_annotation_chooses_block() -> None:
    assert Config().runtime.rootfs_mode == "share"
    assert apply_annotations(Config(), {KEY: "block"}).runtime.rootfs_mode == "block"
    kata = "io.katacontainers.config.runtime.rootfs_mode"
    assert apply_annotations(Config(), {kata: "block"}).runtime.rootfs_mode == "block"


def test_a_bad_mode_is_refused_naming_the_annotation() -> None:
    with pytest.raises(InvalidArgument, match=f"{KEY}.*expected one of"):
        apply_annotations(Config(), {KEY: "nbd"})
