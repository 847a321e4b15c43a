"""A sweep's trials: every (value, seed) of a study planned into stages. Shared by the driver (``bench.sweep``)
and the Tune trials (``bench.sweep_tune``), so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.suite_runner import SuiteError


@dataclass
class Trial:
    index: int
    value: object
    seed: int
    stages: list  # PlannedStage, upstream first; the last is the (val) evaluation
    holdout_eval: object = None  # PlannedStage on the held-out target train, or None
    specs: dict = field(default_factory=dict)  # the dataset specs its stages read (the method's normalisation)
    select: object = None  # PlannedStage of the label-free criteria on target train (bench.select_stage)

    def all_stages(self) -> list:
        """Its stages in run order: the method's and val evaluation, then held-out evaluation and criteria."""
        return self.stages + [ps for ps in (self.holdout_eval, self.select) if ps is not None]


def plan_trials(suite: dict, study, values, seeds, specs: dict, fingerprints: dict,
                holdout: bool) -> list[Trial]:
    """Every (value, seed) trial's planned stages (keys as in ``bench run``: the cache is shared with it)."""
    from bench.evaluate import eval_stage
    from bench.pipeline import plan_stages
    from bench.plan import method_datasets
    from bench.select_stage import select_stage
    from methods.base import get_method, make_config

    if study.method not in suite["methods"]:
        raise SuiteError(f"suite {suite['name']} has no method {study.method!r}; it has {sorted(suite['methods'])}")
    module = get_method(study.method)
    base = {k: v for k, v in (suite["methods"][study.method] or {}).items() if k not in ("variants", "tables")}
    if study.param not in module.Config.__dataclass_fields__:
        raise SuiteError(f"{study.method} has no config key {study.param!r}; valid: "
                         f"{sorted(module.Config.__dataclass_fields__)}")
    evaluation = dict(suite.get("evaluation") or {})
    train = dict(suite.get("train") or {})
    trials = []
    for value in values:
        cfg = make_config(module.Config, {**base, **study.fixed, study.param: value})
        if module.eval_protocol(cfg):
            evaluation = {**evaluation, "protocol": module.eval_protocol(cfg)}
        final = module.stages(cfg)[-1]
        m_specs, m_fps = method_datasets(module, cfg, specs, fingerprints)
        for seed in seeds:
            planned = plan_stages([eval_stage(final, evaluation)], seed, m_fps, train)
            extra = None
            if holdout:
                extra = plan_stages([eval_stage(final, evaluation, "target_holdout")], seed, m_fps, train)[-1]
            select = plan_stages([select_stage(final)], seed, m_fps, train)[-1]
            trials.append(Trial(len(trials), value, seed, planned, extra, m_specs, select))
    return trials
