"""Quality router model files: JSON, gzip-compressed when the name ends in .gz.

The default model ships inside the package (gateway/router/data/default_router.json.gz,
trained by `farebox router train` on the MMLU data in shared/data/router), so quality routing
works offline with nothing to download. Hatch's wheel target includes every file under the
listed packages, so the .gz needs no extra build configuration.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import orjson

from routing.quality_model import QualityModel

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default_router.json.gz"
_GZIP_MAGIC = b"\x1f\x8b"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or malformed; the message names the file."""


def load_model(path: Path) -> QualityModel:
    """Read a model file (plain or gzipped JSON, told apart by content, not name)."""
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
        document = orjson.loads(data)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (gzip.BadGzipFile, EOFError, orjson.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a JSON model file: {exc}") from None
    if not isinstance(document, dict):
        raise ModelFileError(f"{path}: not a JSON model file: expected an object")
    try:
        return QualityModel.from_dict(document)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def dumps(model: QualityModel, compress: bool) -> bytes:
    data = orjson.dumps(model.as_dict())
    # mtime=0: the same model gives the same bytes, so a retrained default diffs cleanly.
    return gzip.compress(data, compresslevel=9, mtime=0) if compress else data


def save_model(model: QualityModel, path: Path) -> int:
    """Write atomically (temp file + rename); gzip if the name ends in .gz. Returns bytes."""
    data = dumps(model, compress=path.suffix == ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp makes the file private; a model is as readable as any other file written.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


@lru_cache(maxsize=1)
def default_model() -> QualityModel:
    """The shipped model, read once per process."""
    return load_model(DEFAULT_MODEL)
