"""Reading the JSON and safetensors files of stored models and states, with the file named in every error.

A cut-off or corrupt file (a copy killed half-way, a disk that filled up) otherwise fails with the library's
bare message (`Expecting value: line 1 column 1`, `SafetensorError: invalid header`) and no path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UnreadableFile(ValueError):
    """A stored file that cannot be parsed; the message starts with its path."""


def read_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise UnreadableFile(f"{path}: not readable JSON ({error}); the file is cut off or corrupt") from None


def load_safetensors(path: Path | str, device: str = "cpu") -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except SafetensorError as error:
        raise UnreadableFile(f"{path}: not a readable safetensors file ({error}); the file is cut off or "
                             "corrupt") from None
