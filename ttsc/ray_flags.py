"""`--ray [ADDRESS]` and `--ray-actors N`, shared by `ttsc eval` and `ttsc search`."""

from __future__ import annotations

import argparse
from typing import Any

from ttsc.common.errors import UserError


def add_ray_flags(c: argparse.ArgumentParser, what: str, also: str = "") -> None:
    """The two flags; `what` is what runs on the actors ("the inputs", "the trials"),
    `also` ends the help of --ray."""
    c.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help=f"run {what} on Ray actors, each with its own engine: on the cluster "
                        "at ADDRESS, or without one on a local Ray instance (started, or the one "
                        f"`ray start` left running){also}")
    c.add_argument("--ray-actors", type=int, metavar="N",
                   help="Ray actors (default: as many as the cluster's CPUs, or GPUs for vLLM "
                        "and --device cuda)")


def ray_options(args: argparse.Namespace) -> Any:
    """The run's RayOptions, or None without --ray; a UserError for flags that
    make no sense (RayOptions checks its own values)."""
    if args.ray_actors is not None and args.ray is None:
        raise UserError("--ray-actors is the number of Ray actors; it needs --ray")
    if args.ray is None:
        return None
    from ttsc.runtime.distributed.workers import RayOptions  # noqa: PLC0415 - only for --ray

    return RayOptions(args.ray or None, args.ray_actors)
