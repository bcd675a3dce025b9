from __future__ import annotations

import argparse


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # placeholder until the bench tool lands
    pass
