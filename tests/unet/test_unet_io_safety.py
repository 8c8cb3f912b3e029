"""Outputs never overwrite inputs or another model, are plain copies with the umask's modes,
and leave no junk; edits that leave nothing, or a U-Net that cannot read the pipeline's text, are refused."""

import os
import shutil

import pytest
from diffusers import UNet2DConditionModel

from slimdiff.cli import main
from slimdiff.io import write_json
from slimdiff.testing import tiny_pipeline, tiny_unet_config
from slimdiff.unet import UNetEditError, load_unet, remove_units, save_student
from slimdiff.sample import load_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe")


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_are_copies_with_the_umasks_modes(pipe_dir, tmp_path, umask_022):
    teacher = load_unet(pipe_dir)
    save_student(remove_units(teacher, ["mid"]), tmp_path / "out", source=pipe_dir, recipe={"edits": "mid"})
    write_json(tmp_path / "out" / "extra.json", {"a": 1})
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 8
    assert {p.stat().st_nlink for p in files} == {1}  # no hard link into the teacher's files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}  # 0666 minus the umask, not 0600
    assert {p.stat().st_nlink for p in pipe_dir.rglob("*") if p.is_file()} == {1}


def test_prune_refuses_to_write_over_its_teacher_or_another_student(pipe_dir, tmp_path, capsys):
    teach = tmp_path / "teach"
    shutil.copytree(pipe_dir, teach)
    before = snapshot(teach)
    assert main(["prune", str(teach), "--preset", "bk-small", "--out", str(teach)]) == 2
    assert "is the MODEL" in capsys.readouterr().err  # the one overlap check (slimdiff.io.check_outputs)
    assert main(["prune", str(teach), "--preset", "bk-small", "--out", str(teach / "unet")]) == 2
    assert "lies inside the MODEL" in capsys.readouterr().err
    assert snapshot(teach) == before
    out = tmp_path / "bk"
    assert main(["prune", str(teach), "--preset", "bk-small", "--out", str(out)]) == 0
    first = snapshot(out)
    assert main(["prune", str(teach), "--remove", "mid", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds another student (" in err and "(preset: 'bk-small' there, None now; edits: None there" in err
    assert err.count("\n") == 1
    assert snapshot(out) == first
    (out / ".pipeline.tmp-x1y2").mkdir()  # what kills left: a temp dir beside a target, a temp PNG inside
    (out / ".search.png.tmp-abc.png").write_bytes(b"partial")
    (tmp_path / ".bk.tmp-k3j4").mkdir()
    assert main(["prune", str(teach), "--preset", "bk-small", "--out", str(out)]) == 0  # the same: completed
    assert snapshot(out) == first and not list(tmp_path.glob(".*")) and not list(out.rglob(".*"))


def test_removing_every_block_is_refused(pipe_dir):
    teacher = load_unet(pipe_dir)
    blocks = [f"{side}.{i}" for side in ("down", "up") for i in range(4)] + ["mid"]
    with pytest.raises(UNetEditError, match="no block would be left"):
        remove_units(teacher, blocks)


def test_a_unet_of_another_text_width_is_refused_by_the_pipeline(pipe_dir, tmp_path):
    wide = UNet2DConditionModel(**{**tiny_unet_config(), "cross_attention_dim": 24})
    with pytest.raises(ValueError, match=r"reads text of width 24, but the text encoder of .* gives 16"):
        load_pipeline(pipe_dir, unet=wide)
    assert load_pipeline(pipe_dir, unet=load_unet(pipe_dir)).unet is not None
