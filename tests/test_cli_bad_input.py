"""Bad input on the command line: one line naming the value, exit status 2, nothing written."""

import pytest

from slimdiff.cli import main

CASES = [
    (["units", "toy", "--vae-factor", "0"], "argument --vae-factor: 0 is not an integer >= 1"),
    (["units", "toy", "--resolution", "-512"], "argument --resolution: -512 is not an integer >= 1"),
    (["generate", "toy", "a red circle", "--guidance", "-1"], "argument --guidance: -1 is not a finite number >= 0"),
    (["generate", "toy", "a red circle", "--steps", "0"], "argument --steps: 0 is not an integer >= 1"),
    (["generate", "toy", "a red circle", "--batch-size", "two"], "argument --batch-size: 'two' is not an integer"),
    (["evaluate", "toy", "--num-images", "0"], "argument --num-images: 0 is not an integer >= 1"),
    (["evaluate", "toy", "--guidance", "inf"], "argument --guidance: inf is not a finite number >= 0"),
    (["profile", "toy", "--repeats", "0"], "argument --repeats: 0 is not an integer >= 1"),
    (["demo", "--learning-rate", "0"], "argument --learning-rate: 0 is not a finite number > 0"),
    (["toy", "render", "-n", "-3", "--out", "x.png"], "argument -n: -3 is not an integer >= 1"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_numeric_flags_are_checked_when_parsed(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "out")] if argv[0] == "generate" else argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_undecodable_prompts_are_refused_and_unknown_words_named(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from slimdiff.sample import generate
    from slimdiff.testing import tiny_pipeline

    out = tmp_path / "images"
    # a prompt of bytes that are not UTF-8 arrives as lone surrogates (Python's argv decoding)
    assert main(["generate", "toy", b"a red \xff circle".decode("utf-8", "surrogateescape"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("slimdiff")]  # (libraries may warn too)
    assert len(errors) == 1 and "prompt 0 'a red \\udcff circle' holds bytes that are not UTF-8 text" in errors[0]
    assert not out.exists()
    bad_file = tmp_path / "prompts.txt"
    bad_file.write_bytes(b"a red circle\n\xff\xfe\n")
    assert main(["generate", "toy", "--prompts-file", str(bad_file), "--out", str(out)]) == 2
    assert f"prompts file {bad_file} is not UTF-8 text" in capsys.readouterr().err
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline(tmp_path / "pipe"))
    with pytest.warns(UserWarning, match=r"does not know .*'a small zorblax circle': \['zorblax'\]"):
        generate(pipe, ["a small zorblax circle", "a small red circle"], steps=1, progress=False)
