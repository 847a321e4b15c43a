"""MiniCity's ``source_weather`` (the default since generator v4): the synthetic sources draw their sky per image;
``False`` gives v3's one blue sky (``minicity_clear``); nothing else changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.data import minicity as mc
from bench.data.minicity_objects import SKY
from bench.data.minicity_style import weather_sky

SIZE = (64, 32)


class _Midpoint:
    """A generator whose every uniform draw is its range's midpoint."""

    def uniform(self, lo, hi):
        return (lo + hi) / 2


def test_weather_sky_blends_clear_and_overcast_at_a_light_level():
    # midpoints: u = 0.5, light = (0.7 + 1.05) / 2 = 0.875; clear (120, 170, 230), overcast (165, 175, 185)
    # → 0.875 · (142.5, 172.5, 207.5), worked out by hand
    np.testing.assert_allclose(weather_sky(_Midpoint()), (124.6875, 150.9375, 181.5625))
    draws = np.array([weather_sky(np.random.default_rng(i)) for i in range(300)])
    blueness = draws[:, 2] / draws[:, 0]  # clear 1.92, overcast 1.12
    assert blueness.min() < 1.2 and blueness.max() > 1.8
    assert draws.max() <= 1.05 * 230 + 1e-6 and draws.min() >= 0.7 * 120 - 1e-6


@pytest.mark.parametrize("domain", ["gta5", "synthia"])
def test_source_weather_changes_the_source_sky_and_nothing_else(domain):
    with_sky = changed = 0
    for i in range(6):  # SYNTHIA-like scenes often show no sky: 2 of these 6 do
        plain, label, _ = mc.make_sample(domain, 0, i, SIZE, source_weather=False)
        wet, label_w, _ = mc.make_sample(domain, 0, i, SIZE)  # the default: weather
        np.testing.assert_array_equal(label, label_w)
        sky = label == SKY
        np.testing.assert_array_equal(plain[~sky], wet[~sky])  # same scene, same draws outside the sky
        with_sky += int(sky.any())
        changed += int((plain[sky] != wet[sky]).any())
    assert changed == with_sky >= 2


def test_source_weather_leaves_the_target_as_it_is():
    for domain in ("cityscapes_train", "cityscapes_val"):
        a, _, _ = mc.make_sample(domain, 0, 1, SIZE, source_weather=False)
        b, _, _ = mc.make_sample(domain, 0, 1, SIZE)
        np.testing.assert_array_equal(a, b)


def test_a_weather_tree_and_a_plain_tree_are_different_trees(tmp_path):
    root, counts = tmp_path / "mc", {"gta5": 2, "synthia": 1, "cityscapes_train": 1, "cityscapes_val": 1}
    assert mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1, source_weather=False)["regenerated"]
    assert json.loads((root / mc.MANIFEST).read_text())["source_weather"] is False
    assert mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1)["regenerated"]
    man = json.loads((root / mc.MANIFEST).read_text())
    assert man["source_weather"] is True and man["version"] == 4
    assert not mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1, source_weather=True)["regenerated"]
    # a v3 tree (one sky, no key in its manifest) is not taken for a v4 one
    (root / mc.MANIFEST).write_text(json.dumps({**{k: v for k, v in man.items() if k != "source_weather"},
                                                "version": 3}))
    assert mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1)["regenerated"]
    # a plain request does not take the weather tree
    assert mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1, source_weather=False)["regenerated"]
    with pytest.raises(ValueError, match="source_weather"):
        mc.ensure_minicity(root, size=SIZE, counts=counts, processes=1, source_weather="yes")


def test_the_clear_sky_tree_keeps_the_shift_a_covariate_one():
    """Issue 15's check on minicity_clear's tree: ≤ 4 target class means nearest another class's mapped source mean."""
    from bench.data.minicity_shift import class_mean_colours, misassigned

    src = class_mean_colours("gta5", 40, source_weather=False)  # v3's one sky (the default: test_minicity)
    assert len(misassigned(src, class_mean_colours("cityscapes_train", 40))) <= 4


def test_the_suite_takes_source_weather():
    from bench.suite_runner import load_suite

    assert load_suite("minicity", ["minicity.source_weather=false"])["minicity"]["source_weather"] is False
    assert load_suite("minicity_clear")["minicity"]["source_weather"] is False


def test_the_suite_and_the_cli_pass_source_weather_to_the_generator(tmp_path, monkeypatch):
    from bench import cli
    from bench.suite_runner import ensure_minicity_data

    counts = {"gta5": 1, "synthia": 0, "cityscapes_train": 1, "cityscapes_val": 1}
    ensure_minicity_data({"root": str(tmp_path / "w"), "size": [64, 32], "counts": counts, "source_weather": False})
    assert json.loads((tmp_path / "w" / mc.MANIFEST).read_text())["source_weather"] is False
    calls = []
    monkeypatch.setattr(mc, "ensure_minicity", lambda root, **kw: calls.append((root, kw)) or {})
    assert cli.main(["data", "minicity", "--no-source-weather"]) == 0
    assert calls[0][0].name == "minicity_clear" and calls[0][1]["source_weather"] is False  # not the default tree
    assert calls[0][1]["counts"] == {"gta5": 1000}  # the minicity_clear suite's source size, not the default's
    assert cli.main(["data", "minicity"]) == 0
    assert calls[1][0].name == "minicity" and calls[1][1].get("source_weather", True) is True
    assert "counts" not in calls[1][1] and mc.DEFAULT_COUNTS["gta5"] == 4000  # the generator's default counts
    assert cli.main(["data", "minicity", "--suite", "minicity_src1k", "--seed", "3"]) == 0  # any suite's tree
    assert calls[2][0].name == "minicity_src1k" and calls[2][1]["counts"] == {"gta5": 1000}
    assert calls[2][1]["seed"] == 3 and calls[2][1].get("source_weather", True) is True
    assert cli.main(["data", "minicity", "--suite", "no_such_suite"]) == 2 and len(calls) == 3
