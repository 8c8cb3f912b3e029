"""Run a stage, or reuse its output only when it was made with the same settings.

    from slimdiff.stages import Stage, run_or_reuse
    stage = Stage("prune", {"preset": "bk-small"}, lambda: save_student(...))
    run_or_reuse(stage, out_dir)  # "ran" or "reused"

A stage's settings (JSON-able: everything its output depends on) are written atomically beside
its output, as `out_dir/NAME.stage.json`, once `run` has returned: the file marks the stage as
finished. A rerun reuses the output only when the saved settings equal the current ones; a killed
stage (no settings file) or one made with other settings runs again, and the log says which and
why. The demo and every bench go through here, so "reuse only when the settings match" is written
once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from slimdiff.io import read_json, to_jsonable, write_json


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # the stage's name: its settings file is NAME.stage.json, the log says it
    settings: Mapping[str, Any]  # everything the output depends on (JSON-able); others: rerun
    run: Callable[[], Any]  # makes the output (writes its files; its return value is not kept)
    done: Callable[[], bool] | None = None  # optional extra check that the output is there (e.g. a file)

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"Stage.name={self.name!r} is invalid: a non-empty name without '/'")


def settings_path(stage: Stage | str, out_dir: str | Path) -> Path:
    """Where `stage`'s settings are written: `out_dir/NAME.stage.json`."""
    name = stage.name if isinstance(stage, Stage) else stage
    return Path(out_dir) / f"{name}.stage.json"


def differences(saved: Mapping[str, Any] | None, now: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys of `now` whose value differs in `saved`, as "key: SAVED there, NOW now" (JSON
    values compared, so tuples equal lists); [] when they match. `saved` None: nothing saved."""
    saved = {} if saved is None else to_jsonable(dict(saved))
    return [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in to_jsonable(dict(now)).items()
            if k not in ignore and saved.get(k) != v]


def reusable(stage: Stage, out_dir: str | Path) -> tuple[bool, str]:
    """(whether `stage`'s output in `out_dir` can be reused, why or why not, in words)."""
    path = settings_path(stage, out_dir)
    if not path.is_file():
        return False, "not finished before"
    saved = read_json(path)
    differ = differences(saved, stage.settings) + [f"{k}: {saved[k]!r} there, absent now"
                                                   for k in saved if k not in stage.settings]
    if differ:
        return False, f"made with other settings ({'; '.join(differ)})"
    if stage.done is not None and not stage.done():
        return False, "its output is missing"
    return True, "same settings"


def run_or_reuse(stage: Stage, out_dir: str | Path, log: Callable[[str], None] | None = None) -> str:
    """Reuse `stage`'s output in `out_dir` when its saved settings equal `stage.settings`, else run
    it and then write the settings atomically; returns "reused" or "ran" (and says it to `log`)."""
    ok, why = reusable(stage, out_dir)
    if ok:
        if log is not None:
            log(f"{stage.name}: reused ({why})")
        return "reused"
    path = settings_path(stage, out_dir)
    path.unlink(missing_ok=True)  # a kill during the rerun must not leave the old settings as "finished"
    if log is not None:
        log(f"{stage.name}: running ({why})")
    stage.run()
    write_json(path, dict(stage.settings))
    return "ran"
