"""The registered methods, one line each: name → the module whose ``METHOD`` (a ``methods.base.Method``) declares
it. Adding a method: its folder, one line here, a suite entry (README, "Adding a method")."""

METHODS = {
    "source_only": "methods.source_only",
    "oracle": "methods.oracle",
    "adabn": "methods.adabn",
    "adaptsegnet": "methods.adversarial",
    "cag_uda": "methods.cag_uda.stages",
    "ssf_dan": "methods.ssf_dan.stages",
    "bismap": "methods.bismap.stages",
    "pixintrada": "methods.pixintrada.stages",
    "intrada": "methods.intrada",
}
