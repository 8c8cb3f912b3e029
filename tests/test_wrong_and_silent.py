"""Inputs that were once accepted silently, now refused in one line naming the value (or handled):
outputs over, inside or around an input (every writing command), a VAE of another latent space,
a wrong teacher prediction type on the toy, another world in `compare`, a student of another
teacher in `assemble`, a lone --height, damaged encoding-cache entries, `demo --step-distill 64`,
pickled weights files."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slimdiff.cli import main


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory) -> Path:
    from slimdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", seed=0)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` -> its SHA-1 (an input must come out byte-identical)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def one_line_error(argv, capsys) -> str:
    """The one error line of a refused command (what precedes it on stderr: loading progress bars)."""
    code = main(argv)
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith(f"slimdiff {argv[0]}: error: "), err
    return last


# ------------------------------------------------------------------------------ outputs apart from inputs

# command -> argv with IN (an input directory) and OUT (the output under test)
WRITERS = {
    "units": ["units", "IN", "--json", "OUT"],
    "profile": ["profile", "IN", "--json", "OUT"],
    "prune": ["prune", "IN", "--preset", "bk-small", "--out", "OUT"],
    "prune-vae": ["prune-vae", "IN", "--out", "OUT"],
    "distill": ["distill", "--teacher", "toy", "--student", "IN", "--data", "toy", "--out", "OUT"],
    "step-distill": ["step-distill", "--teacher", "toy", "--student", "IN", "--data", "toy", "--out", "OUT"],
    "distill-vae": ["distill-vae", "--teacher", "toy", "--student", "IN", "--out", "OUT"],
    "cache": ["cache", "--teacher", "toy", "--data", "IN", "--cache-dir", "OUT"],
    "generate": ["generate", "IN", "a red circle", "--out", "OUT"],
    "evaluate": ["evaluate", "IN", "--json", "OUT"],
    "compare": ["compare", "IN", "--md", "OUT"],
    "demo": ["demo", "--model", "IN", "--out", "OUT"],
    "assemble": ["assemble", "--teacher", "toy", "--student", "IN", "--take", "M2", "--out", "OUT"],
}
RELATIONS = {"is": lambda inp: inp, "lies inside": lambda inp: inp / "sub", "contains": lambda inp: inp.parent}


@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("command", list(WRITERS))
def test_no_command_writes_over_into_or_around_an_input(command, relation, tiny_pipe, tmp_path, capsys):
    inp = tmp_path / "work" / "input"
    shutil.copytree(tiny_pipe, inp)
    before = tree_digest(tmp_path)
    out = RELATIONS[relation](inp)
    argv = [str(inp) if a == "IN" else str(out) if a == "OUT" else a for a in WRITERS[command]]
    err = one_line_error(argv, capsys)
    assert f"{out} {relation} the " in err and "choose another" in err, err
    assert tree_digest(tmp_path) == before  # nothing written, nothing changed


def test_the_library_writers_check_too(tiny_pipe, tmp_path):
    from slimdiff.vae.prune import prune_vae

    inp = shutil.copytree(tiny_pipe, tmp_path / "pipe")
    before = tree_digest(inp)
    with pytest.raises(ValueError, match=r"lies inside the MODEL"):  # prune-vae into the teacher's pipeline
        prune_vae(str(inp), str(inp / "vae-half"))
    assert tree_digest(inp) == before


# ------------------------------------------------------------------------------ VAEs of another latent space


@pytest.fixture(scope="module")
def other_vae(tiny_pipe, tmp_path_factory) -> Path:
    """The tiny pipeline's VAE with SD's scaling factor 0.18215 -> 0.5: same channels, another latent space."""
    vae = tmp_path_factory.mktemp("vae") / "vae"
    shutil.copytree(tiny_pipe / "vae", vae)
    config = json.loads((vae / "config.json").read_text())
    config["scaling_factor"] = 0.5
    (vae / "config.json").write_text(json.dumps(config))
    return vae


@pytest.mark.parametrize("argv", [
    ["generate", "PIPE", "a red circle", "--vae", "VAE", "--out", "OUT"],
    ["compare", "PIPE", "--vae", "VAE", "--num-images", "2"],
    ["distill-vae", "--teacher", "PIPE", "--student", "VAE", "--out", "OUT", "--max-steps", "1"],
], ids=["generate", "compare", "distill-vae"])
def test_a_vae_of_another_latent_space_is_refused(argv, tiny_pipe, other_vae, tmp_path, capsys):
    argv = [str(tiny_pipe) if a == "PIPE" else str(other_vae) if a == "VAE" else str(tmp_path / "o") if a == "OUT"
            else a for a in argv]
    err = one_line_error(argv, capsys)
    assert "has scaling_factor=0.5" in err and "0.18215" in err and "another latent space" in err, err


# ------------------------------------------------------------------------------ worlds, teachers, sizes


def test_a_wrong_teacher_prediction_type_is_refused_on_the_toy():
    from slimdiff.distill.step import _declared_prediction

    kind, where = _declared_prediction("toy")  # the shipped pipeline's scheduler: epsilon
    assert kind == "epsilon" and where.endswith("scheduler_config.json")


def test_a_wrong_teacher_prediction_type_on_the_toy_cli(tmp_path, capsys):
    err = one_line_error(["step-distill", "--teacher", "toy", "--student", "toy", "--teacher-prediction-type",
                          "v_prediction", "--out", str(tmp_path / "s"), "--toy-size", "4", "--batch-size", "2",
                          "--max-steps", "1", "--quiet"], capsys)
    assert "the teacher 'toy' predicts 'epsilon'" in err and "'v_prediction' was given" in err, err


def test_compare_refuses_a_model_of_another_world(tiny_pipe, tmp_path, capsys):
    from slimdiff.testing import tiny_clip_tokenizer

    other = shutil.copytree(tiny_pipe, tmp_path / "clip-world")
    shutil.rmtree(other / "tokenizer")
    tiny_clip_tokenizer(tmp_path / "tok").save_pretrained(other / "tokenizer")
    err = one_line_error(["compare", str(tiny_pipe), str(other), "--num-images", "2"], capsys)
    assert f"{other} is not a model of the toy world" in err and "slimdiff evaluate" in err, err


def test_assemble_refuses_a_student_of_another_teacher(tiny_pipe, tmp_path, capsys):
    from slimdiff.testing import tiny_pipeline

    other = tiny_pipeline(tmp_path / "other-teacher", seed=3)  # same architecture, other weights
    student = tmp_path / "student"
    assert main(["prune", str(tiny_pipe), "--preset", "bk-small", "--out", str(student)]) == 0
    err = one_line_error(["assemble", "--teacher", str(other), "--student", str(student), "--take", "M2",
                          "--out", str(tmp_path / "m2")], capsys)
    assert f"--teacher '{other}' is not the teacher" in err and f"names '{tiny_pipe}'" in err, err
    assert not (tmp_path / "m2").exists()
    assert main(["assemble", "--teacher", str(tiny_pipe), "--student", str(student), "--take", "M2",
                 "--out", str(tmp_path / "m2")]) == 0  # its own teacher


def test_a_lone_height_or_width_is_kept(tiny_pipe):
    from slimdiff.sample import generate

    tall = generate(str(tiny_pipe), ["red circle"], steps=1, height=32, progress=False)[0]
    wide = generate(str(tiny_pipe), ["red circle"], steps=1, width=32, progress=False)[0]
    assert tall.size == (64, 32) and wide.size == (32, 64)  # PIL: (width, height); the other side: 64


def test_demo_refuses_an_impossible_step_count_before_any_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    err = one_line_error(["demo", "--step-distill", "64", "--out", str(out)], capsys)  # LCM (the default): its grid
    assert "DemoConfig.step_distill=64 is invalid" in err and "at most solver_steps=50" in err, err
    assert not out.exists()
    err = one_line_error(["demo", "--step-distill", "64", "--step-method", "snapfusion", "--out", str(out)], capsys)
    assert "DemoConfig.step_distill=64 is invalid" in err and "choose steps among" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------ damaged files


def damage(path: Path, how: str) -> None:
    good = path.read_bytes()
    if how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import load_file

        entry = load_file(str(path))
        if how == "wrong shape":
            entry["moments"] = entry["moments"][:, :1].contiguous()
        elif how == "float64":
            entry["moments"] = entry["moments"].double()
        elif how == "nan":
            entry["text"] = torch.full_like(entry["text"], float("nan"))
        save_file(entry, str(path))


@pytest.mark.parametrize("how, why", [
    ("truncated", "unreadable"), ("empty", "empty file"), ("wrong shape", "moments has shape (8, 1, 8)"),
    ("float64", "moments is torch.float64, the encoders give torch.float32"),
    ("nan", "text holds NaN or infinite values"),
])
def test_a_damaged_cache_entry_is_named(how, why, tiny_pipe, tmp_path):
    from slimdiff.data import build_dataset
    from slimdiff.data.cache import BatchEncoder, EncodingCache
    from slimdiff.sample import load_pipeline

    pipe = load_pipeline(str(tiny_pipe))
    data = build_dataset("toy", 64, seed=0, toy_size=2)
    cache = EncodingCache(tmp_path / "cache", data.fingerprint, pipe.vae, pipe.text_encoder)
    BatchEncoder(pipe.vae, pipe.tokenizer, pipe.text_encoder, cache)([data[0], data[1]])
    damage(cache.path(1), how)
    cache.load(0)  # intact
    again = EncodingCache(tmp_path / "cache", data.fingerprint, pipe.vae, pipe.text_encoder)  # a later run
    for c in (cache, again):
        with pytest.raises(ValueError, match="damaged encoding-cache entry") as info:
            c.load(1)
        message = str(info.value)
        assert str(cache.path(1)) in message and why in message and "\n" not in message, message


def test_pickled_weights_are_refused_naming_the_file_and_why(tmp_path):
    import argparse

    from slimdiff.distill.perceptual import VGG16Features

    bad = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": argparse.Namespace(x=1)}, bad)  # a pickled object, not a tensor
    with pytest.raises(ValueError) as info:
        VGG16Features.from_file(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: this VGG16 weights file pickles Python objects other than tensors")
    assert "never unpickles code" in message and "weights_only=False" not in message and "\n" not in message
