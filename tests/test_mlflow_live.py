"""MLflow is written while a suite runs (each stage as it ends, with its real times), one run per unique stage
however often the suite runs, IoU in percent, one logged model per experiment (external: the weights stay in the
cache), the suite's saved comparison view, and the record reads the same through the REST API."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from fixtures import tiny_minicity_suite, write_suite

import bench.live_log
import bench.scheduler
import bench.tracking
from bench.suite_runner import run_suite


def _runs(client, kind: str) -> list:
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'", max_results=1000)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A tiny suite run twice on one store (the second entirely from the cache); during the first, each stage
    checks what MLflow already holds before it starts (``seen``)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("live")
    suite = tiny_minicity_suite(tmp, {"gta5": 8, "synthia": 2, "cityscapes_train": 8, "cityscapes_val": 2})
    suite["only"] = ["source_only", "oracle"]
    for m in suite["methods"].values():
        if "iters" in m:
            m.update(iters=6, batch_size=2)
    path, results = write_suite(suite, tmp / "tiny.yaml"), tmp / "results"
    uri = "sqlite:///" + str(results / "mlflow.db")
    seen, real = [], bench.scheduler._stage_log_run

    def inspecting(planned, cache_root, specs, train):
        if (results / "mlflow.db").is_file():
            client = MlflowClient(uri)
            seen.append((planned.name, planned.upstream, _runs(client, "stage"), _runs(client, "experiment"),
                         _runs(client, "invocation")))
        return real(planned, cache_root, specs, train)

    bench.scheduler._stage_log_run = inspecting
    try:
        first = run_suite(str(path), results_root=results, executor="local")
    finally:
        bench.scheduler._stage_log_run = real
    second = run_suite(str(path), results_root=results, executor="local")
    return {"first": first, "second": second, "seen": seen, "uri": uri, "cache": results / "cache"}


@pytest.mark.slow
def test_stage_runs_are_logged_as_each_stage_ends_with_real_times(two_runs):
    from mlflow.tracking import MlflowClient

    client, cache = MlflowClient(two_runs["uri"]), two_runs["cache"]
    evals = [s for s in two_runs["seen"] if s[0] == "eval"]
    assert len(evals) == 2 and len(two_runs["seen"]) == 4
    for _, upstream, stages, _, invocations in evals:
        # the model this eval scores already has its FINISHED run, while the suite is still running
        assert [r.info.status for r in invocations] == ["RUNNING"]
        run = next(r for r in stages if r.data.tags["cache_key"] == upstream["model"])
        meta = json.loads((cache / upstream["model"] / "meta.json").read_text())
        assert run.info.status == "FINISHED"
        # which CPU and kernel ISA computed it: the bytes of a CPU run depend on them (README: "Across machines")
        assert run.data.tags["cpu"] == meta["cpu"]["cpu"] != "?"
        assert run.data.tags["cpu_id"] == meta["cpu"]["cpu_id"] == bench.tracking.cpu_environment()["cpu_id"]
        assert run.data.tags["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert run.info.start_time == int(meta["started"] * 1000) and run.info.end_time == int(meta["ended"] * 1000)
        assert run.info.end_time - run.info.start_time == pytest.approx(meta["seconds"] * 1000, abs=2)
        rows = [json.loads(ln) for ln in (cache / upstream["model"] / "metrics.jsonl").read_text().splitlines()]
        hist = client.get_metric_history(run.info.run_id, "loss/segmenter")
        # each point at the time it was computed, inside the stage's span, not one "logged now" stamp
        assert [(m.step, m.timestamp) for m in hist] == [(r["step"], int(r["time"] * 1000)) for r in rows]
        assert all(run.info.start_time <= m.timestamp <= run.info.end_time for m in hist)
    # when the second eval starts, the first experiment is already logged, in percent
    _, _, _, experiments, _ = evals[1]
    assert len(experiments) == 1 and experiments[0].data.tags["units"] == "percent"
    key = experiments[0].data.tags["cache_key"]
    frac = json.loads((cache / key / "result.json").read_text())["miou_19"]
    assert experiments[0].data.metrics["miou_19"] == pytest.approx(100 * frac)


@pytest.mark.slow
def test_a_rerun_adds_no_stage_run_and_links_the_existing_ones(two_runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(two_runs["uri"])
    assert {o.status for o in two_runs["second"]["outcomes"].values()} == {"cached"}
    stages = _runs(client, "stage")
    keys = [r.data.tags["cache_key"] for r in stages]
    assert sorted(keys) == sorted(two_runs["first"]["outcomes"]) and len(set(keys)) == 4  # one run per stage
    assert len({r.info.run_name for r in stages}) == 4
    exps = _runs(client, "experiment")
    assert len(exps) == 4 and len(_runs(client, "invocation")) == 2
    by_inv = {}
    for r in exps:
        links = {k: v for k, v in r.data.tags.items() if k.startswith("stage_run.")}
        assert set(links.values()) <= {s.info.run_id for s in stages} and len(links) == 2
        by_inv.setdefault(r.data.tags["method"], []).append(links)
    assert all(a == b for a, b in by_inv.values())  # both invocations point at the same stage runs
    so = next(r for r in exps if r.data.tags["method"] == "source_only")
    assert so.data.params["source_only.iters"] == "6" and "iters" not in so.data.params  # under its prefix
    assert [i.dataset.digest for i in client.get_run(so.info.run_id).inputs.dataset_inputs]
    table = json.loads(Path(client.download_artifacts(so.info.run_id, "per_class_iou.json")).read_text())
    rows = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert rows["class"][0] == "mIoU" and rows["iou_percent"][0] == pytest.approx(so.data.metrics["miou_19"], abs=0.01)


@pytest.mark.slow
def test_each_experiment_logs_the_model_it_evaluated_without_copying_it(two_runs):
    from mlflow.tracking import MlflowClient

    client, cache = MlflowClient(two_runs["uri"]), two_runs["cache"]
    exps = {r.info.run_id: r for r in _runs(client, "experiment")}
    models = client.search_logged_models([client.get_experiment_by_name("tiny").experiment_id])
    # one per experiment run (2 experiments × 2 invocations), each produced by and listed as the output of its run
    assert sorted(m.source_run_id for m in models) == sorted(exps) and len(models) == 4
    for m in models:
        run = exps[m.source_run_id]
        assert m.status == "READY" and m.name == run.info.run_name and m.model_type == "segmenter"
        assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [m.model_id]
        # external: it points at the model stage's cache directory, whose weights are not copied into MLflow
        d = cache / run.data.tags["model_key"]
        assert m.tags["mlflow.model.isExternal"] == "true" and m.tags["cache_dir"] == str(d)
        assert Path(m.tags["weights"]).is_file() and Path(m.tags["weights"]).parent == d
        art = Path(m.artifact_location.removeprefix("file://"))
        assert sorted(p.name for p in art.rglob("*") if p.is_file()) == ["MLmodel", "model_spec.json"]
        spec = json.loads((art / "model_spec.json").read_text())
        assert spec["architecture"] == json.loads((d / "model.json").read_text()) and spec["method"] == m.tags["method"]
        assert m.params["method"] == m.tags["method"] and f"{m.tags['method']}.iters" in m.params
        # its metrics: the run's IoUs (in percent), on the evaluation set, mIoU first
        metrics = {x.key: x for x in m.metrics}
        assert m.metrics[0].key == "miou_19" and metrics["miou_19"].value == run.data.metrics["miou_19"]
        assert all(k.startswith(("miou_", "iou_")) for k in metrics) and "iou_19/road" in metrics
        assert metrics["miou_19"].dataset_name == "cityscapes val (target_val)"
        assert metrics["miou_19"].dataset_digest == run.data.tags["fingerprint.target_val"]


@pytest.mark.slow
def test_the_suite_has_a_saved_view_comparing_methods_by_miou(two_runs):
    """The view MLflow's UI opens from ``bench ui``'s link: experiment runs, best mIoU first, mIoU the first column
    and the first chart (checked in headless Chromium when written: the UI reads exactly these keys)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(two_runs["uri"])
    exp = client.get_experiment_by_name("tiny")
    view = json.loads(exp.tags[bench.tracking.VIEW_TAG])
    assert view["name"] == "Methods by mIoU" and view["createdAt"] <= view["updatedAt"]
    state = json.loads(view["state"])
    assert state["searchFilter"] == "tags.kind = 'experiment'" and state["orderByAsc"] is False
    assert state["orderByKey"] == state["selectedColumns"][0] == "metrics.`miou_19`"
    assert state["columnOrder"][:3] == ["attributes.`Run Name`", "runDateAndNestInfo", "metrics.`miou_19`"]
    assert state["compareRunCharts"][0]["metricKey"] == "miou_19" and state["isAccordionReordered"] is True
    assert [s["uuid"] for s in state["compareRunSections"]] == [state["compareRunCharts"][0]["metricSectionId"]]
    assert bench.tracking.comparison_urls(two_runs["uri"], "http://h:1") == [
        f"tiny: http://h:1/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=bench-methods"]


def test_the_view_of_a_synthia_suite_leads_with_its_mious():
    state = bench.tracking.comparison_view_state(bench.tracking.miou_metrics(["16", "13"]))
    assert state["selectedColumns"][:3] == ["metrics.`miou_16`", "metrics.`miou_13`", "metrics.`miou_13_of_16`"]
    assert state["orderByKey"] == "metrics.`miou_16`"


@pytest.mark.slow
def test_a_model_that_cannot_be_logged_is_a_warning_not_the_end_of_the_suite(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    def broken(*a, **k):
        raise RuntimeError("no room for models")

    monkeypatch.setattr(bench.tracking.Tracker, "log_external_model", broken)
    monkeypatch.setattr(bench.live_log, "save_comparison_view", broken)
    suite = tiny_minicity_suite(tmp_path, {"gta5": 4, "synthia": 2, "cityscapes_train": 4, "cityscapes_val": 2})
    suite["only"] = ["source_only"]
    suite["methods"]["source_only"].update(iters=2, batch_size=2)
    out = run_suite(str(write_suite(suite, tmp_path / "tiny.yaml")), results_root=tmp_path / "r", executor="local")
    assert {o.status for o in out["outcomes"].values()} == {"done"}
    err = capsys.readouterr().err
    assert "warning: MLflow: the model of source_only seed 0 not logged (RuntimeError: no room for models)" in err
    assert "warning: MLflow: the saved view 'Methods by mIoU' not logged" in err
    client = MlflowClient("sqlite:///" + str(tmp_path / "r" / "mlflow.db"))
    (run,) = _runs(client, "experiment")
    assert run.info.status == "FINISHED" and run.data.metrics["miou_19"] > 0  # the run and its metrics are there
    assert not client.search_logged_models([run.info.experiment_id])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_the_record_through_the_mlflow_rest_api(two_runs):
    """A real ``mlflow server`` (one worker, no job runner) on a free loopback port over the test's store."""
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", two_runs["uri"], "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.read().strip() == b"OK":
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        exp = _post(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10, "filter": "name = 'tiny'"})
        eid = exp["experiments"][0]["experiment_id"]
        search = {"experiment_ids": [eid], "max_results": 100}
        stages = _post(base, "/api/2.0/mlflow/runs/search", {**search, "filter": "tags.kind = 'stage'"})["runs"]
        exps = _post(base, "/api/2.0/mlflow/runs/search", {**search, "filter": "tags.kind = 'experiment'",
                                                          "order_by": ["metrics.miou_19 DESC"]})["runs"]
        models = _post(base, "/api/2.0/mlflow/logged-models/search", {"experiment_ids": [eid]})["models"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # the oracle trains a stage named source_only.train (on the target): the run names say which row uses it
    assert len(stages) == 4 and sorted(r["info"]["run_name"] for r in stages) == [
        "eval(source_only.train) seed 0 · oracle", "eval(source_only.train) seed 0 · source_only",
        "source_only.train seed 0 · oracle", "source_only.train seed 0 · source_only"]
    assert len(exps) == 4
    mious = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "miou_19") for r in exps]
    assert mious == sorted(mious, reverse=True)
    for r in exps:
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert tags["units"] == "percent" and r["info"]["run_name"] == f"{tags['method']} seed 0"
        frac = json.loads((two_runs["cache"] / tags["cache_key"] / "result.json").read_text())["miou_19"]
        miou = next(m["value"] for m in r["data"]["metrics"] if m["key"] == "miou_19")
        assert miou == pytest.approx(100 * frac) and 0 <= miou <= 100
    # one logged model per experiment run, with the run's mIoU
    by_run = {m["info"]["source_run_id"]: m for m in models}
    assert len(models) == 4 and set(by_run) == {r["info"]["run_id"] for r in exps}
    for r in exps:
        m = by_run[r["info"]["run_id"]]
        model_miou = next(x["value"] for x in m["data"]["metrics"] if x["key"] == "miou_19")
        assert model_miou == next(x["value"] for x in r["data"]["metrics"] if x["key"] == "miou_19")


def test_cpu_environment_names_the_cpu_its_kernel_isa_and_the_caps_set_on_them(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    env = bench.tracking.cpu_environment()
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and "MKL_CBWR" not in env
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert bench.tracking.environment()["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # what the report and the run tags show


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512vl avx512_bf16 sha_ni

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
"""


def test_cpu_signature_tells_apart_two_cpus_a_vm_names_alike():
    # the same masked model name, the kernels' ISA differs: the records must differ
    zen4 = bench.tracking.cpu_signature(CPUINFO)
    assert zen4 == "AuthenticAMD 25/17/1 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16"  # first block only
    zen3 = CPUINFO.replace("17", "1").replace(" avx512f avx512bw avx512vl avx512_bf16", "")
    zen3 = bench.tracking.cpu_signature(zen3)
    assert zen3 == "AuthenticAMD 25/1/1 avx avx2 fma"
    assert bench.tracking.cpu_signature("model name\t: something\n") == "unknown"
    assert bench.tracking.cpu_environment()["cpu_id"]  # recorded beside the name
