"""A teacher's LoRA on a pruned student through the recorded inheritance (issue 20 item 3).

The LoRA is made with peft on the tiny teacher (lora_B nonzero, so outputs change) and saved with
diffusers' `save_lora_weights`; students are `bk-small` (BK renames: up resnets.1 <- resnets.2) and
an identity student (every unit kept) saved by `save_student`, as `slimdiff prune` does.
"""

import json

import pytest
import torch

TARGETS = ["proj_in", "to_q", "to_out.0", "conv1"]


def _lora(unet, out, alpha=4, seed=0):
    """Add a rank-2 peft LoRA to `unet` (in place; gaussian A, nonzero B), save it with its metadata."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=2, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.2)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=config.to_dict())
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from slimdiff.testing import tiny_pipeline, tiny_unet
    from slimdiff.unet import apply_preset, save_student, to_slim

    d = tmp_path_factory.mktemp("lora")
    pipe = tiny_pipeline(d / "pipe", seed=0)
    bk, _ = apply_preset(tiny_unet(0), "bk-small")
    save_student(bk, d / "bk-small", pipe, {"preset": "bk-small"})
    save_student(to_slim(tiny_unet(0)), d / "same", pipe, {"preset": None})
    teacher = tiny_unet(0)
    _lora(teacher, d / "lora")
    return {"dir": d, "pipe": pipe, "teacher": teacher}


def _pipeline_with_lora(pipe_dir, lora_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir)
    pipe.load_lora_weights(lora_dir)
    return pipe


def _out(unet):
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), text).sample


def test_bk_rename_lands_on_the_student_module_and_removed_units_are_reported(world):
    from slimdiff.unet import read_lora, remap_lora
    from slimdiff.unet.lora import weight_shapes

    d = world["dir"]
    lora, _, _ = read_lora(d / "lora")
    inheritance = json.loads((d / "bk-small" / "recipe.json").read_text())["inheritance"]
    mapped, report, _ = remap_lora(lora, inheritance, weight_shapes(d / "bk-small"), weight_shapes(d / "pipe" / "unet"))
    t_key = "unet.up_blocks.1.resnets.2.conv1.lora_A.weight"
    assert torch.equal(mapped["unet.up_blocks.1.resnets.1.conv1.lora_A.weight"], lora[t_key])
    assert report.kept["up_blocks.1.resnets.2.conv1"] == ["up_blocks.1.resnets.1.conv1"]
    assert report.kept["up_blocks.1.attentions.2.proj_in"] == ["up_blocks.1.attentions.1.proj_in"]
    # bk-small removes down layer 1, up layer 1 and the mid block: their modules are dropped and listed
    for removed in ("down_blocks.0.attentions.1.proj_in", "down_blocks.3.resnets.1.conv1",
                    "up_blocks.2.resnets.1.conv1", "mid_block.attentions.0.proj_in", "mid_block.resnets.0.conv1"):
        assert report.dropped[removed] == "removed (no student module inherits it)"
    modules = {k.rsplit(".lora_", 1)[0] for k in lora}
    assert len(report.kept) + len(report.dropped) == len(modules)
    # every kept module of the student was inherited from exactly that teacher module
    s_to_t = {s[:-7]: t[:-7] for s, t in inheritance.items() if s.endswith(".weight")}
    assert all(s_to_t[s] == t for t, ss in report.kept.items() for s in ss)
    assert len(mapped) == 2 * len(report.kept) and not any("mid_block" in k for k in mapped)
    assert "renamed up_blocks.1.resnets.2.conv1 -> up_blocks.1.resnets.1.conv1" in "\n".join(report.lines())


def test_identity_student_with_the_mapped_lora_equals_the_teacher_with_it(world, capsys):
    from slimdiff.cli import main

    d = world["dir"]
    assert main(["remap-lora", "--lora", str(d / "lora"), "--student", str(d / "same"), "--out", str(d / "same-lora")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("kept 102 LoRA modules (0 renamed), dropped 0")
    teacher = _pipeline_with_lora(world["pipe"], d / "lora").unet
    student = _pipeline_with_lora(d / "same" / "pipeline", d / "same-lora").unet
    with_lora = _out(teacher)
    assert torch.allclose(_out(student), with_lora, atol=1e-5, rtol=0)
    teacher.disable_lora()
    assert (with_lora - _out(teacher)).abs().max() > 1e-2  # the LoRA does change the outputs


def test_bk_student_modules_receive_exactly_the_teachers_lora_matrices(world, capsys):
    from slimdiff.cli import main

    d = world["dir"]
    assert main(["remap-lora", "--lora", str(d / "lora"), "--student", str(d / "bk-small"), "--out", str(d / "bk-lora")]) == 0
    report = json.loads((d / "bk-lora" / "recipe.json").read_text())["remap_lora"]
    assert "dropped" in capsys.readouterr().out
    student = dict(_pipeline_with_lora(d / "bk-small" / "pipeline", d / "bk-lora").unet.named_modules())
    teacher = dict(world["teacher"].named_modules())
    received = {n for n, m in student.items() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert received == {s for ss in report["kept"].values() for s in ss}
    for t, ss in report["kept"].items():
        for s in ss:
            for part in ("lora_A", "lora_B"):
                assert torch.equal(getattr(student[s], part)["default_0"].weight, getattr(teacher[t], part)["default"].weight)
            assert student[s].scaling["default_0"] == teacher[t].scaling["default"] == 2.0  # alpha 4 / r 2, from metadata


def test_a_channel_pruned_module_is_dropped_with_its_shapes():
    from slimdiff.unet import remap_lora

    lora = {"unet.a.lora_A.weight": torch.ones(2, 8), "unet.a.lora_B.weight": torch.ones(6, 2),
            "unet.b.lora_A.weight": torch.ones(2, 8), "unet.b.lora_B.weight": torch.ones(6, 2)}
    teacher = {"a.weight": (6, 8), "b.weight": (6, 8)}
    student = {"a.weight": (6, 8), "b2.weight": (3, 8)}  # b kept as b2 with half its output channels
    mapped, report, _ = remap_lora(lora, {"a.weight": "a.weight", "b2.weight": "b.weight"}, student, teacher)
    assert report.kept == {"a": ["a"]} and set(mapped) == {"unet.a.lora_A.weight", "unet.a.lora_B.weight"}
    assert report.dropped == {"b": "shape: student b2.weight (3, 8), LoRA down (2, 8), up (6, 2)"}


def test_kohya_keys_are_renamed_in_their_own_format():
    from slimdiff.unet import remap_lora

    lora = {"lora_unet_up_blocks_1_resnets_2_conv1.lora_down.weight": torch.ones(2, 4, 3, 3),
            "lora_unet_up_blocks_1_resnets_2_conv1.lora_up.weight": torch.ones(5, 2, 1, 1),
            "lora_unet_up_blocks_1_resnets_2_conv1.alpha": torch.tensor(2.0),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, 3)}
    shapes = {"up_blocks.1.resnets.1.conv1.weight": (5, 4, 3, 3)}
    inheritance = {"up_blocks.1.resnets.1.conv1.weight": "up_blocks.1.resnets.2.conv1.weight"}
    mapped, report, _ = remap_lora(lora, inheritance, shapes)
    assert sorted(mapped) == sorted(["lora_unet_up_blocks_1_resnets_1_conv1.lora_down.weight",
                                     "lora_unet_up_blocks_1_resnets_1_conv1.lora_up.weight",
                                     "lora_unet_up_blocks_1_resnets_1_conv1.alpha",
                                     "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"])
    assert report.text_keys == 1 and report.base_check == "inheritance"


def test_a_lora_of_another_base_is_a_one_line_error(world, tmp_path, capsys):
    from slimdiff.cli import main
    from slimdiff.toy import components

    d = world["dir"]
    other = components.build_unet(components.unet_config(block_out_channels=(16, 16, 32, 32), cross_attention_dim=16,
                                                         attention_head_dim=2, norm_num_groups=4, sample_size=8), seed=0)
    _lora(other, tmp_path / "other")
    argv = ["remap-lora", "--lora", str(tmp_path / "other"), "--student", str(d / "bk-small"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the student's teacher" in err
    assert "other/pytorch_lora_weights.safetensors" in err and "first: down_blocks.0.attentions.0.proj_in: teacher weight (8, 8, 1, 1)" in err
    assert not (tmp_path / "o" / "pytorch_lora_weights.safetensors").exists()


def test_modules_the_teacher_never_had_and_pickles_are_refused(world, tmp_path):
    from safetensors.torch import save_file

    from slimdiff.unet import remap_lora, remap_lora_files

    d = world["dir"]
    save_file({"unet.no_such.block.lora_A.weight": torch.ones(2, 8), "unet.no_such.block.lora_B.weight": torch.ones(8, 2)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match=r"x.safetensors does not match the student's teacher \(1 of 1 modules differ\); "
                                         r"first: module 'no_such.block' is not in the teacher"):
        remap_lora_files(tmp_path / "x.safetensors", d / "bk-small", tmp_path / "o")
    # without the teacher's shapes, a LoRA none of whose modules the student inherited is refused too
    with pytest.raises(ValueError, match=r"none of its 1 modules is in the student .*teacher\?$"):
        remap_lora({"unet.no_such.lora_A.weight": torch.ones(2, 8), "unet.no_such.lora_B.weight": torch.ones(8, 2)},
                   {"a.weight": "a.weight"}, {"a.weight": (8, 8)})
    (tmp_path / "l.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"l.bin: slimdiff reads .safetensors only \(no pickles\)"):
        remap_lora_files(tmp_path / "l.bin", d / "bk-small", tmp_path / "o")


def test_a_slim_class_student_loads_the_lora_and_inserted_copies_receive_it(world, tmp_path):
    """snapfusion inserts a copy of each up.2 attention: both the unit and its copy get the teacher's LoRA;
    the student is saved as `SlimUNet2DConditionModel` (not expressible), which `load_lora_weights` reads too."""
    from diffusers import DiffusionPipeline

    from slimdiff.testing import tiny_unet
    from slimdiff.unet import apply_preset, remap_lora_files, save_student

    student, _ = apply_preset(tiny_unet(0), "snapfusion")
    assert save_student(student, tmp_path / "snap", world["pipe"], {"preset": "snapfusion"})["unet_class"][1] == \
        "SlimUNet2DConditionModel"
    report = remap_lora_files(world["dir"] / "lora", tmp_path / "snap", tmp_path / "snap-lora")
    t = "up_blocks.2.attentions.1.proj_in"
    assert report.kept[t] == ["up.2.layer.1.attn.proj_in", "up.2.layer.1.attn_1.proj_in"]
    assert report.dropped["down_blocks.0.attentions.0.proj_in"] == "removed (no student module inherits it)"
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "snap" / "pipeline")
    pipe.load_lora_weights(tmp_path / "snap-lora")
    modules, teacher = dict(pipe.unet.named_modules()), dict(world["teacher"].named_modules())
    for s in report.kept[t]:
        assert torch.equal(modules[s].lora_B["default_0"].weight, teacher[t].lora_B["default"].weight)
    assert sum(hasattr(m, "lora_A") for m in modules.values()) == sum(len(s) for s in report.kept.values())


def test_an_inheritance_of_another_student_is_refused():
    from slimdiff.unet import remap_lora

    lora = {"unet.a.lora_A.weight": torch.ones(2, 8), "unet.a.lora_B.weight": torch.ones(8, 2)}
    with pytest.raises(ValueError, match=r"^the inheritance names 1 tensors the student does not have \(first: 'b.weight'\)"):
        remap_lora(lora, {"b.weight": "a.weight"}, {"a.weight": (8, 8)})
