"""Progress bars for the long steps (preprocessing, calibration, evaluation, speed): tqdm when it is installed
(the `train` extra has it), else one self-overwriting line on a terminal, else nothing."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    """`with Progress(total, "calibrate", enabled) as bar: bar.update(n)`."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total, self.description, self.done = total, description, 0
        self._tqdm: Any = None
        self._line = False
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._line = sys.stderr.isatty()
        else:
            self._tqdm = tqdm(total=total, desc=description, unit="sample", leave=False, dynamic_ncols=True)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._tqdm is not None:
            self._tqdm.update(count)
        elif self._line:
            sys.stderr.write(f"\r{self.description}: {self.done}/{self.total}\x1b[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._line:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._line = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
