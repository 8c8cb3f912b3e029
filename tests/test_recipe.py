"""The typed recipe (slimdiff.recipe): read, write, validate, merge history."""

import pytest

from slimdiff.recipe import merge, read_recipe, sampling_of, teacher_of, write_recipe


def test_write_then_read_is_the_same(tmp_path):
    recipe = {"teacher": "toy", "sampling": {"steps": 8, "guidance": 5.0}, "distill": {"max_steps": 3}}
    write_recipe(tmp_path, recipe)
    assert read_recipe(tmp_path) == recipe
    assert teacher_of(recipe) == "toy" and sampling_of(recipe) == {"steps": 8, "guidance": 5.0}
    assert read_recipe(tmp_path / "absent") == {}


@pytest.mark.parametrize("bad, field", [
    ({"teacher": 3}, "'teacher'=3"),
    ({"sampling": {"steps": 0, "guidance": 5.0}}, "steps=0"),
    ({"sampling": {"steps": 8, "guidance": "high"}}, "guidance='high'"),
    ({"history": {"distill": {}}}, "'history'"),
])
def test_a_damaged_field_is_named(tmp_path, bad, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[")):
        write_recipe(tmp_path, bad)
    (tmp_path / "recipe.json").write_text(__import__("json").dumps(bad))
    with pytest.raises(ValueError, match="recipe.json"):
        read_recipe(tmp_path)


def test_merge_keeps_the_replaced_stage_in_history():
    first = {"teacher": "toy", "prune": {"preset": "bk-small"}, "distill": {"max_steps": 600}}
    second = merge(first, {"distill": {"max_steps": 1200}})
    assert second == {"teacher": "toy", "prune": {"preset": "bk-small"}, "distill": {"max_steps": 1200},
                      "history": [{"distill": {"max_steps": 600}}]}
    third = merge(second, {"step_distill": {"steps": 8}, "sampling": {"steps": 8, "guidance": 5.0}})
    assert third["history"] == second["history"] and third["distill"] == {"max_steps": 1200}
    assert merge(first, {}) == first
