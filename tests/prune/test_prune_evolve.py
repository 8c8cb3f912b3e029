"""SnapFusion's architecture evolving loop with a fake score and a fake latency table."""

import pytest

from slimdiff.prune.evolve import EvolveConfig, UNetEditor, evolve

MS = {"A": 4.0, "B": 2.0, "C": 1.0, "D": 3.0}  # latency of each unit
VALUE = {"A": 8.0, "B": 1.0, "C": 3.0, "D": 3.0}  # score each unit contributes


def _base(u):
    return u.rstrip("'")


class FakeLUT:
    def predict(self, net):
        return sum(MS[_base(u)] for u in net)


def fake_score(net):
    # a copy (u') contributes half of what its source contributes
    return sum(VALUE[_base(u)] * 0.5 ** u.count("'") for u in net)


class FakeEditor:
    """A network is a tuple of unit names; a copy of u is u' inserted right after u."""

    def candidates(self, net):
        return list(net)

    def remove(self, net, unit):
        return tuple(u for u in net if u != unit)

    def copy(self, net, unit):
        i = net.index(unit)
        return net[: i + 1] + (unit + "'",) + net[i + 1 :]


def test_evolve_action_sequence():
    # round 0: lat 10 > 6, ratios A 2, B 0.5, C 3, D 1 -> remove B (lat 8)
    # round 1: lat 8 > 6, A 2, C 3, D 1 -> remove D (lat 5)
    # round 2: lat 5 <= 6: copy the most useful per ms, C (lat 6 fits)
    # round 3: lat 6: C, A, C' copies all exceed 6 -> stop
    net, res = evolve(("A", "B", "C", "D"), fake_score, FakeLUT(), EvolveConfig(6.0), editor=FakeEditor())
    assert [(a.action, a.unit) for a in res.actions] == [("remove", "B"), ("remove", "D"), ("add", "C")]
    assert net == ("A", "C", "C'")
    assert [a.latency_after for a in res.actions] == [8.0, 5.0, 6.0]
    assert res.final_latency == 6.0 and res.final_score == 12.5
    assert res.stop_reason == "target met; no addition fits under it"
    assert res.rounds[0]["B"] == {"d_score": 1.0, "d_latency": 2.0, "ratio": 0.5}


def test_evolve_interleaves_robust_training_with_the_rounds():
    """Algorithm 1: robust training, then the architecture step, every round; the score is
    measured again after each training; the final network is trained after its last edit."""
    events = []

    def train_fn(net):
        events.append(("train", net))
        return net

    def score(net):
        events.append(("score", net))
        return fake_score(net)

    cfg = EvolveConfig(6.0, max_rounds=2)
    net, res = evolve(("A", "B", "C", "D"), score, FakeLUT(), cfg, editor=FakeEditor(), train_fn=train_fn)
    trained = [n for what, n in events if what == "train"]
    assert trained == [("A", "B", "C", "D"), ("A", "C", "D"), ("A", "C")] and res.trainings == 3
    for k, (what, n) in enumerate(events):
        if what == "train":
            assert events[k + 1] == ("score", n)  # re-scored right after training
    assert [(a.action, a.unit) for a in res.actions] == [("remove", "B"), ("remove", "D")]
    assert res.stop_reason == "max_rounds (2) reached" and net == ("A", "C")


def test_evolve_trains_and_stops_at_max_rounds():
    trained = []
    cfg = EvolveConfig(6.0, max_rounds=1)
    net, res = evolve(("A", "B", "C", "D"), fake_score, FakeLUT(), cfg, editor=FakeEditor(),
                      train_fn=lambda n: trained.append(n) or n)
    assert trained == [("A", "B", "C", "D"), ("A", "C", "D")] and net == ("A", "C", "D")
    assert res.stop_reason == "max_rounds (1) reached; target not met (8.000 ms > 6.000 ms)"
    assert res.evolve_config["max_rounds"] == 1 and res.to_recipe()["trainings"] == 2


def test_evolve_breaks_ties_by_milliseconds_saved():
    # a saturated score: every dScore is 0, so every ratio ties at 0; forward order C, B, D, A
    # (1, 2, 3, 4 ms). The unit saving the most ms goes first, and nothing worth 0 is copied.
    net, res = evolve(("C", "B", "D", "A"), lambda n: 1.0, FakeLUT(), EvolveConfig(7.0), editor=FakeEditor())
    assert [(a.action, a.unit) for a in res.actions] == [("remove", "A")]
    assert net == ("C", "B", "D") and res.stop_reason == "target met; no addition fits under it"


def test_evolve_does_not_rank_noise_first():
    # removing B *raises* the score by 0.5 (noise on a finite prompt set): dScore(B) = -0.5.
    # Ranked as -0.5 / 2 ms it would go first; as dScore+ = 0 it ties with D (0 / 3 ms), and D
    # saves more. Then under target, C (3 / 1 ms) is copied.
    value = {"A": 8.0, "B": -0.5, "C": 3.0, "D": 0.0}

    def score(net):
        return sum(value[_base(u)] * 0.5 ** u.count("'") for u in net)

    net, res = evolve(("A", "B", "C", "D"), score, FakeLUT(), EvolveConfig(8.0), editor=FakeEditor())
    assert [(a.action, a.unit) for a in res.actions] == [("remove", "D"), ("add", "C")]
    assert res.rounds[0]["B"] == {"d_score": -0.5, "d_latency": 2.0, "ratio": 0.0}
    # a tolerance makes small losses count as noise too: C (3 / 1) at tolerance 5 ties at 0
    net, res = evolve(("A", "B", "C", "D"), score, FakeLUT(), EvolveConfig(8.0, score_tolerance=5.0),
                      editor=FakeEditor())
    assert res.actions[0].unit == "D" and res.rounds[0]["C"]["ratio"] == 0.0


def test_toy_score_prefers_the_continuous_alignment(monkeypatch):
    import importlib

    from slimdiff.prune.evolve import ToyAlignmentScore

    evolve_module = importlib.import_module("slimdiff.prune.evolve")  # the module (slimdiff.prune.evolve: the function)

    results = [{"alignment": 1.0, "alignment_score": 0.93}, {"alignment": 0.75}]
    monkeypatch.setattr(evolve_module, "resolve_pipeline", lambda base: type("P", (), {})())
    monkeypatch.setattr(evolve_module, "evaluate", lambda pipe, **kw: results.pop(0))
    score = ToyAlignmentScore(num_images=2, steps=2)
    assert score("unet") == 0.93 and score.key == "alignment_score"
    assert score("unet") == 0.75 and score.key == "alignment"
    assert score.to_dict() == {"name": "toy_alignment", "base": "toy", "split": "validation", "num_images": 2,
                               "steps": 2, "seed": 0, "key": "alignment"}


def test_evolve_remove_only():
    cfg = EvolveConfig(6.0, allow_add=False)
    net, res = evolve(("A", "B", "C", "D"), fake_score, FakeLUT(), cfg, editor=FakeEditor())
    assert net == ("A", "C") and res.stop_reason == "target met"


def test_evolve_unreachable_target_raises():
    class NoSaving(FakeLUT):
        def predict(self, net):
            return 10.0

    with pytest.raises(ValueError, match="over the target 6.000 ms and no removable unit saves time"):
        evolve(("A", "B"), fake_score, NoSaving(), EvolveConfig(6.0), editor=FakeEditor())


def test_evolve_config_validation():
    with pytest.raises(ValueError, match="target_latency_ms must be > 0"):
        EvolveConfig(0.0)
    with pytest.raises(ValueError, match="kinds \\['downsample'\\]"):
        EvolveConfig(1.0, kinds=("downsample",))


# ------------------------------------------------------------------ on the tiny U-Net

ATTN_MS = {0: 3.0, 1: 2.0, 2: 1.0, 3: 1.0}  # fake LUT: ms of an attention unit per level
ATTN_VALUE = {"up.3.layer.2.attn": 0.6, "down.0.layer.0.attn": 1.0, "up.1.layer.0.attn": 100.0}  # else 10


class TinyFakeLUT:
    def predict(self, model):
        return 10.0 + sum(ATTN_MS[u.level] for u in model.units() if u.kind == "attn")


def tiny_fake_score(model):
    # value of each attention unit, by the teacher unit it comes from (a copy counts again)
    sources = getattr(model, "unit_sources", {})
    return sum(ATTN_VALUE.get(sources.get(u.name, u.name), 10.0) for u in model.units() if u.kind == "attn")


class FewUnitsEditor(UNetEditor):
    """The real edits, with actions limited to a few attention units (keeps the test fast)."""

    def candidates(self, model):
        return [u for u in super().candidates(model) if u.startswith(("down.0.", "up.3.", "up.1.layer.0."))]


def test_evolve_on_the_tiny_unet(tiny_slim):
    # 16 attention units: 5 at level 0 (15 ms), 5 at level 1 (10), 5 at level 2 (5), mid (1): 41 ms
    # actions on down.0.*, up.3.*, up.1.layer.0.* attention units only
    # round 0: 41 > 36, least score per ms: up.3.layer.2.attn (0.6 / 3) -> 38 ms
    # round 1: 38 > 36, next: down.0.layer.0.attn (1 / 3)                -> 35 ms
    # round 2: 35 <= 36, copy the most useful per ms: up.1.layer.0.attn (100 / 1) -> 36 ms
    # round 3: every copy would exceed 36 ms -> stop
    assert TinyFakeLUT().predict(tiny_slim) == 41.0
    cfg = EvolveConfig(36.0, kinds=("attn",))
    student, res = evolve(tiny_slim, tiny_fake_score, TinyFakeLUT(), cfg, editor=FewUnitsEditor(cfg.kinds))
    assert [(a.action, a.unit) for a in res.actions] == [
        ("remove", "up.3.layer.2.attn"),
        ("remove", "down.0.layer.0.attn"),
        ("add", "up.1.layer.0.attn"),
    ]
    assert [a.latency_after for a in res.actions] == [38.0, 35.0, 36.0]
    assert res.stop_reason == "target met; no addition fits under it"
    names = [u.name for u in student.units() if u.kind == "attn"]
    assert "up.1.layer.0.attn.1" in names and "down.0.layer.0.attn" not in names and len(names) == 15
    assert student.unit_sources["up.1.layer.0.attn.1"] == "up.1.layer.0.attn"
