"""A Tune trainable that only reports the value it was given (a module of its own: Ray workers import it fast)."""


def draw(config):
    from ray import tune

    tune.report({"x": config["delta_d"]})
