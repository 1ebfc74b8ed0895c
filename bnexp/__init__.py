"""bnexp: does batch normalization make training robust to the learning rate? Where, and by how much?"""

from __future__ import annotations

import os
import sys

if sys.argv[:1] == ["-m"]:  # `python -m bnexp.<command>`, while runpy imports it: a Ctrl-C from here on is one
    from bnexp.stops import stop_at_once_until_training  # line, not an import's traceback (bnexp.stops)

    stop_at_once_until_training()
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnexp.results import Results

try:
    __version__ = version("bnexp")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"


def load(path_or_storage: str | os.PathLike, study_name: str | None = None) -> Results:
    """Results as data: a report dir, a sweep dir, a storage URL + study name, or a `bnexp.run -m` dir ->
    `Results` with `.trials` and `.curves` (pandas DataFrames) and `.summary` (a dict). See bnexp.results."""
    from bnexp.results import load as _load  # pandas loads here, not on `import bnexp`

    return _load(path_or_storage, study_name)
