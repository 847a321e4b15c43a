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

    def label_stage(self, name: str | None):
        """The planned stage whose pseudo-labels this trial trains on: the last stage named ``name`` or
        ``name_<rule>`` (BiSMAP's ``bismap.label_ias``) that a train stage reads; None when no train stage reads
        one, e.g. BiSMAP with ``pla: none``, whose MAPs labels feed the STM only."""
        read = {k for ps in self.stages if ps.stage.kind == "train" for k in ps.upstream.values()}
        used = [ps for ps in self.stages if name and (ps.name == name or ps.name.startswith(name + "_"))
                and ps.key in read]
        return used[-1] if used else None


def plan_trials(suite: dict, study, values, seeds, specs: dict, fingerprints: dict,
                holdout: bool) -> list[Trial]:
    """Every (value, seed) trial's planned stages. Each value is planned by ``bench.suite_plan.plan_suite`` as a
    suite of its own (``value_suite``), so its stages, protocol and keys are those ``bench run`` gives that config
    (the cache is shared with it); the held-out evaluation and the criteria go on its model
    (``plan_extra_stages``).
    ``specs``/``fingerprints``: the suite's one target's, plus ``target_holdout`` when ``holdout``."""
    from bench.evaluate import eval_elsewhere
    from bench.select_stage import select_stage
    from bench.suite_plan import plan_extra_stages, plan_suite

    check_study(suite, study)
    target = next(iter(suite.get("targets") or {"": {}}))
    train = dict(suite.get("train") or {})
    trials = []
    for value in values:
        experiments, _, _ = plan_suite(value_suite(suite, study, value, seeds), {target: fingerprints})
        for e in experiments:
            model = e.eval.stage.upstream["model"]
            (*_, select), m_specs = plan_extra_stages(e, [select_stage(model)], specs, fingerprints, train)
            extra = None
            if holdout:
                extra = plan_extra_stages(e, [eval_elsewhere(e.eval, "target_holdout")], specs, fingerprints,
                                          train)[0][-1]
            trials.append(Trial(len(trials), value, e.seed, e.stages, extra, m_specs, select))
    return trials


def check_study(suite: dict, study) -> None:
    """The study's method is one of the suite's and has the swept key (a ``SuiteError`` naming the valid ones)."""
    from methods.base import get_method

    if study.method not in suite["methods"]:
        raise SuiteError(f"suite {suite['name']} has no method {study.method!r}; it has {sorted(suite['methods'])}")
    fields = get_method(study.method).Config.__dataclass_fields__
    if study.param not in fields:
        raise SuiteError(f"{study.method} has no config key {study.param!r}; valid: {sorted(fields)}")


def value_suite(suite: dict, study, value, seeds) -> dict:
    """The suite one swept value runs as: the study's method alone (its suite settings, the study's fixed ones and
    the value; no variants) over ``seeds``; evaluation, datasets and train settings as the suite's."""
    base = {k: v for k, v in (suite["methods"][study.method] or {}).items() if k not in ("variants", "tables")}
    return {**suite, "methods": {study.method: {**base, **study.fixed, study.param: value}}, "seeds": list(seeds),
            "only": None, "ablations": False}
