"""bnexp: does batch normalization make training robust to the learning rate? Where, and by how much?"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bnexp")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"
