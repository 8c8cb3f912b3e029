"""Small shared I/O helpers: atomic writes and JSON recipes.

Every file slimdiff writes goes through `atomic_write` (write to a temporary name in the same
directory, fsync, then `os.replace`), so a killed job never leaves a half-written file.
Temporary names are `.<name>.tmp-<random>`, so `remove_stale_temps` can clear what a killed job
left behind; written files get the usual mode (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    Use for writers that want a file name (torch.save, safetensors, matplotlib savefig):
        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # mkstemp (and safetensors) create 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


TEMP_MARK = ".tmp-"  # temporary names: .<name>.tmp-<random>[suffix]


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of `path`'s temporary names (files and directories) in its parent directory."""
    return f".{Path(path).name}{TEMP_MARK}"


def file_mode() -> int:
    """The mode `open()` gives a new file: 0666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def apply_file_modes(directory: str | os.PathLike) -> None:
    """Give every file under `directory` the umask's mode (writers such as safetensors use 0600)."""
    mode = file_mode()
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


def remove_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries (`.<name>.tmp-*`, files or folders) a killed job left in `directory`.

    `name`: only those of this target name; None: all. Returns what was removed. Call it before
    writing, not while another job writes into the same directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{name}{TEMP_MARK}*" if name is not None else f".*{TEMP_MARK}*"
    removed = []
    for stale in directory.glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def check_disjoint(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], flag: str = "--out") -> None:
    """ValueError when the output directory `out` is, contains or lies inside one of `inputs`.

    `inputs`: what each input is called (e.g. "--student") -> its path; None and names that are
    not existing paths (built-ins such as `toy`, globs) are skipped. Writing there would
    overwrite or mix with the input (e.g. `distill --out` equal to `--student`).
    """
    target = Path(out).expanduser().resolve()
    for what, source in inputs.items():
        if source is None or not Path(source).expanduser().exists():
            continue
        src = Path(source).expanduser().resolve()
        if target == src or src in target.parents or target in src.parents:
            relation = "is" if target == src else "lies inside" if src in target.parents else "contains"
            raise ValueError(f"{flag} {out} {relation} the {what} {source}: writing there would overwrite or "
                             f"mix with the input; choose another {flag}")


def check_outputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """`check_disjoint` for every output of a command against every input, so nothing it writes is
    an input, inside one, or holds one. `outputs` / `inputs`: flag -> path, a list of paths, or None."""
    def flat(named: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(k, x) for k, v in named.items() for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None]

    sources = flat(inputs)
    for flag, out in flat(outputs):
        for what, source in sources:
            check_disjoint(out, {what: source}, flag)


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, no code runs.
    ValueError naming the file and why otherwise (`what`: e.g. "VGG16 weights file"); a file that
    pickles other objects is refused, never retried with `weights_only=False` (it would run them)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line][:1]
        raise ValueError(f"{path}: this {what} pickles Python objects other than tensors"
                         f"{' (' + found[0] + ')' if found else ''}; slimdiff reads only tensors and never unpickles "
                         f"code (a crafted file runs whatever it holds): re-save it as a state dict of tensors or as "
                         f".safetensors") from None
    except Exception as e:  # not a torch file, truncated
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise ValueError(f"{path} is not a readable {what} ({type(e).__name__}: {first})") from None


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (bytes, or str as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy/torch scalars -> plain JSON types.

    Non-finite floats (NaN, inf) become None: JSON has no literal for them, and json.dumps
    would write `NaN`, which no strict JSON reader accepts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write `obj` (dataclasses allowed) as pretty JSON."""
    return atomic_write(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a damaged or truncated file
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged") from None


# ----------------------------------------------------------------------------- named pipelines
# Worlds register the pipelines they ship under a name (`slimdiff.toy` registers "toy" when the
# package is imported), so the core resolves names without knowing any world.
NAMED_PIPELINES: dict[str, Callable[[], Path]] = {}


def register_named_pipeline(name: str, path: Callable[[], Path]) -> None:
    """Make `name` resolve to the pipeline directory `path()` (called when the name is used)."""
    NAMED_PIPELINES[name] = path


def named_pipeline(name: str) -> Path | None:
    """The directory a registered name stands for, or None for an unregistered name."""
    path = NAMED_PIPELINES.get(name)
    return Path(path()) if path is not None else None


def is_pipeline_source(value: str) -> bool:
    """Whether a model argument names a pipeline: a registered name or a directory with model_index.json."""
    return named_pipeline(str(value)) is not None or (Path(value) / "model_index.json").is_file()
