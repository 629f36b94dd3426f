"""Crafted torch.export archives: a payload that runs when unpickled, and member rewriting."""

from __future__ import annotations

import builtins
import zipfile
from pathlib import Path


class Touch:
    """Unpickling this creates `marker`: code from the file, run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def rewrite(source: Path, target: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with members replaced (by their name's ending) or added."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            for ending, new in replace.items():
                if info.filename.endswith(ending):
                    data = new
            out.writestr(info, data)
        root = src.namelist()[0].split("/")[0]
        for name, data in (add or {}).items():
            out.writestr(f"{root}/{name}", data)
    return target


def pickled_sample_inputs(program: Path, target: Path, marker: Path) -> Path:
    """The archive with its sample inputs replaced by a payload that creates `marker`."""
    import pickle

    return rewrite(program, target, {"sample_inputs/model.pt": pickle.dumps(Touch(marker))})
