from __future__ import annotations

import argparse


def add_classify_parser(sub: argparse._SubParsersAction) -> None:  # placeholder until the client lands
    pass
