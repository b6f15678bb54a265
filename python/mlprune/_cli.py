"""The ``mlprune`` console script: the same command line as the Rust binary."""

import sys

from ._mlprune import run_cli


def main() -> None:
    sys.exit(run_cli(["mlprune", *sys.argv[1:]]))
