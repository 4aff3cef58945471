"""``features``, ``spec`` and ``env``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cocoon.cli.output import Reporter


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.verb == "env":
        from cocoon.cli.common import effective_config
        from cocoon.config.loader import to_dict, to_toml

        config = effective_config(args)
        print(json.dumps(to_dict(config), indent=2) if args.json else to_toml(config), end="\n")
        return 0
    if args.verb == "features":
        from cocoon.oci.features import features_document

        print(json.dumps(features_document(), indent=2))
        return 0
    from cocoon.oci.defaultspec import write_spec

    write_spec(Path(args.bundle), rootless=args.rootless_spec)
    return 0
