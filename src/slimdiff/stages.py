"""Run a stage, or reuse its output only when it was made with the same settings.

    from slimdiff.stages import Stage, run_or_reuse
    stage = Stage("prune", {"preset": "bk-small"}, make_student, output=out / "pruned")
    run_or_reuse(stage, out)  # "ran" or "reused", and the log says which and why

A stage's settings (JSON-able: everything its output depends on) are written atomically beside
its output, as `out_dir/NAME.stage.json` = {"settings": ..., "finished": false} before `run` and
{"settings": ..., "finished": true, "seconds": S} once it has returned (S: the wall time of the run that
finished it; a resumed stage's earlier runs are not counted). A rerun:
- reuses the output when it finished with the same settings (and `output` is there);
- runs again when it did not finish: with the same settings, `run` may resume its own partial work
  (a distillation's checkpoints); with other settings (or a finished output made with other
  settings) `output` is deleted first, so nothing stale is resumed or mistaken for a result.
The demo and every bench go through here, so "reuse only when the settings match" is written once.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from slimdiff.io import read_json, to_jsonable, write_json


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # the stage's name: its settings file is NAME.stage.json, the log says it
    settings: Mapping[str, Any]  # everything the output depends on (JSON-able); others: rerun
    run: Callable[[], Any]  # makes the output (writes its files; its return value is not kept)
    output: Path | None = None  # the file or directory `run` writes (checked to exist; deleted when stale)

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"Stage.name={self.name!r} is invalid: a non-empty name without '/'")


def settings_path(stage: Stage, out_dir: str | Path) -> Path:
    """Where `stage`'s settings are written: `out_dir/NAME.stage.json`."""
    return Path(out_dir) / f"{stage.name}.stage.json"


def differences(saved: Mapping[str, Any] | None, now: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys of `now` whose value differs in `saved`, as "key: SAVED there, NOW now" (JSON
    values compared, so tuples equal lists); [] when they match. `saved` None: nothing saved."""
    saved = {} if saved is None else to_jsonable(dict(saved))
    return [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in to_jsonable(dict(now)).items()
            if k not in ignore and saved.get(k) != v]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_or_reuse(stage: Stage, out_dir: str | Path, log: Callable[[str], None] | None = None) -> str:
    """Reuse `stage`'s output when it finished with settings equal to `stage.settings`, else run it
    (see the module docstring); returns "reused" or "ran" and says which, and why, to `log`."""
    path = settings_path(stage, out_dir)
    saved = read_json(path) if path.is_file() else None
    differ = [] if saved is None else (differences(saved.get("settings"), stage.settings)
                                       + [f"{k}: {v!r} there, absent now" for k, v in saved.get("settings", {}).items()
                                          if k not in stage.settings])
    present = stage.output is None or stage.output.exists()
    if saved is not None and not differ and saved.get("finished") and present:
        why, reuse = "finished with the same settings", True
    elif saved is None:
        why, reuse = "not run before", False
    elif differ:
        why, reuse = f"made with other settings ({'; '.join(differ)}): its output is deleted", False
        if stage.output is not None:
            _remove(stage.output)
    else:
        why, reuse = "resuming: not finished" if not saved.get("finished") else "its output is missing", False
    if log is not None:
        log(f"{stage.name}: {'reused' if reuse else 'running'} ({why})")
    if reuse:
        return "reused"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"settings": dict(stage.settings), "finished": False})
    t0 = time.perf_counter()
    stage.run()
    write_json(path, {"settings": dict(stage.settings), "finished": True, "seconds": time.perf_counter() - t0})
    return "ran"


def stage_seconds(name: str, out_dir: str | Path) -> float | None:
    """The wall seconds of the run that finished stage `name` in `out_dir`; None when unfinished or not
    recorded (a stage finished before the time was recorded)."""
    path = Path(out_dir) / f"{name}.stage.json"
    saved = read_json(path) if path.is_file() else {}
    return saved.get("seconds") if saved.get("finished") else None
