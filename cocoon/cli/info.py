"""``features`` and ``spec``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cocoon.cli.output import Reporter


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.verb == "features":
        from cocoon.oci.features import features_document

        print(json.dumps(features_document(), indent=2))
        return 0
    from cocoon.oci.defaultspec import write_spec

    write_spec(Path(args.bundle), rootless=args.rootless_spec)
    return 0
