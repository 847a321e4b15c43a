"""Comparison tables: statistics against numpy, bolding on rounded values, LaTeX/Markdown/terminal/CSV output."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.data.labels import CLASS_NAMES, SUBSETS
from bench.table_render import (
    ablation_latex,
    ablation_markdown,
    best_cells,
    render_terminal,
    to_latex,
    to_markdown,
    write_tables,
)
from bench.tables import ablation_frame, comparison_frame, per_class_frame

CLASSES = [CLASS_NAMES[c] for c in SUBSETS["19"]]
METHODS = ("cag_uda", "source_only")


def make_results(seed=0, methods=METHODS, seeds=(0, 1, 2), variants=("",)):
    rng = np.random.default_rng(seed)
    out = []
    for m in methods:
        for v in variants:
            for s in seeds:
                r = {"method": m, "seed": s, "miou_19": rng.random()}
                if v:
                    r["variant"] = v
                r.update({f"iou_19/{c}": rng.random() for c in CLASSES})
                out.append(r)
    return out


def paper_frame(values: dict, paper="Some Paper 50%", table=3, row="AdaptSeg_Net"):
    """A hand-built published row with only the given columns (others absent)."""
    return pd.DataFrame([{"paper": paper, "table": table, "row": row, "backbone": "ResNet-101",
                          "benchmark": "gta5->cityscapes", **values}])


def test_comparison_mean_std_against_numpy():
    results = make_results()
    frame = comparison_frame(per_class_frame(results), paper_frame({"road": 86.5, "mIoU": 41.4}), CLASSES)
    assert list(frame["method"]) == [*METHODS, "AdaptSeg_Net"]
    for m in METHODS:
        runs = [r for r in results if r["method"] == m]
        row = frame[frame["method"] == m].iloc[0]
        assert row["ours"] and row["seeds"] == 3 and row["source"] == "ours (3 seeds)"
        for c, key in [*((c, f"iou_19/{c}") for c in CLASSES), ("mIoU", "miou_19")]:
            vals = 100 * np.array([r[key] for r in runs])
            assert row[c] == pytest.approx(vals.mean())
            assert row[f"{c}_std"] == pytest.approx(vals.std(ddof=1))
    paper = frame.iloc[-1]
    assert not paper["ours"] and paper["source"] == "Some Paper 50%, Table 3"
    assert paper["road"] == 86.5 and paper["mIoU"] == 41.4
    assert np.isnan(paper["seeds"]) and np.isnan(paper["road_std"]) and np.isnan(paper["sidewalk"])


def test_variants_and_ablation():
    results = make_results(methods=("cag_uda",), variants=("", "no_dist"))
    ours = per_class_frame(results)
    frame = comparison_frame(ours, None, CLASSES)
    assert list(frame["method"]) == ["cag_uda", "cag_uda (no_dist)"]
    abl = ablation_frame(ours, "cag_uda")
    miou = {v: 100 * np.array([r["miou_19"] for r in results if r.get("variant", "") == v]) for v in ("", "no_dist")}
    assert list(abl["variant"]) == ["", "no_dist"]
    assert abl.loc["cag_uda (no_dist)", "mIoU"] == pytest.approx(miou["no_dist"].mean())
    assert abl.loc["cag_uda (no_dist)", "mIoU_std"] == pytest.approx(miou["no_dist"].std(ddof=1))
    assert abl.loc["cag_uda (no_dist)", "gain"] == pytest.approx(miou["no_dist"].mean() - miou[""].mean())
    assert abl.loc["cag_uda", "gain"] == 0
    md = ablation_markdown(abl, "Ablation").splitlines()
    gain = miou["no_dist"].mean() - miou[""].mean()
    assert md[0] == "### Ablation" and len(md) == 2 + 2 + 2
    assert md[-1] == (f"| cag_uda (no_dist) | 3 | {miou['no_dist'].mean():.1f} ± {miou['no_dist'].std(ddof=1):.1f} "
                      f"| {gain:+.1f} |")
    with pytest.raises(KeyError):
        ablation_frame(ours, "nope")
    # the paper's rows beside ours: its value and its gain over its own full-method row
    abl["paper row"], abl["paper mIoU"] = ["Full", "No distance"], [50.2, 47.0]
    md = ablation_markdown(abl, "Ablation", base="cag_uda").splitlines()
    assert md[2].endswith("| paper row | paper | paper gain |") and md[3].count("|") == md[2].count("|")
    base_cells = f"| {miou[''].mean():.1f} ± {miou[''].std(ddof=1):.1f} | — | Full | 50.2 | — |"
    assert md[-1].endswith("| No distance | 47.0 | -3.2 |") and md[-2].endswith(base_cells)
    tex = ablation_latex(abl, "Ablation 50%", label="tab:abl", base="cag_uda")
    assert r"Ablation 50\%" in tex and r"No distance & 47.0 & $-$3.2 \\" in tex and r"\toprule" in tex
    assert r"\label{tab:abl}" in tex and r"& --- & Full & 50.2 & --- \\" in tex  # the base row: nothing to gain


def test_miou_star_for_16_classes():
    rng = np.random.default_rng(1)
    names16 = [CLASS_NAMES[c] for c in SUBSETS["16"]]
    results = [{"method": "m", "seed": s, "miou_16": rng.random(), "miou_13_of_16": rng.random(),
                **{f"iou_16/{c}": rng.random() for c in names16}} for s in range(2)]
    frame = comparison_frame(per_class_frame(results, "16"), None, names16, extra=("mIoU", "mIoU*"))
    assert frame.loc[0, "mIoU*"] == pytest.approx(100 * np.mean([r["miou_13_of_16"] for r in results]))


def tie_frame():
    """Three paper rows: road 41.24 and 41.16 both display 41.2 (tie, both best); sidewalk 50.04 < 50.06."""
    rows = [paper_frame({"road": 41.24, "sidewalk": 50.04, "mIoU": 30.0}, row="A"),
            paper_frame({"road": 41.16, "sidewalk": 50.06, "mIoU": 29.0}, row="B"),
            paper_frame({"road": 41.01, "sidewalk": 49.0}, row="C")]
    return comparison_frame(None, pd.concat(rows, ignore_index=True), ["road", "sidewalk"])


def test_best_cells_uses_rounded_values_with_ties():
    best = best_cells(tie_frame(), ["road", "sidewalk", "mIoU"])
    assert list(best["road"]) == [True, True, False]
    assert list(best["sidewalk"]) == [False, True, False]
    assert list(best["mIoU"]) == [True, False, False]  # NaN is never best


def latex_rows(tex: str) -> list[str]:
    body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
    return [ln for ln in body.splitlines() if ln.endswith(r"\\")]


def test_latex_structure_escaping_and_bold():
    results = make_results()
    ours = per_class_frame(results)
    frame = comparison_frame(ours, paper_frame({"road": 99.0, "mIoU": 10.0}), CLASSES)
    tex = to_latex(frame, "Per-class IoU (%), GTA5→Cityscapes", "tab:gta")
    first, rest = tex.split("\n", 1)
    assert first == r"% uda-bench table; needs \usepackage{booktabs,graphicx}"  # \resizebox, \rotatebox
    assert rest.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"\caption{Per-class IoU (\%), GTA5$\rightarrow$Cityscapes}" in tex and r"\label{tab:gta}" in tex
    rows = latex_rows(tex)
    assert len(rows) == 1 + len(frame)
    for ln in rows:  # Method, Source, 19 classes, mIoU
        assert len(re.findall(r"(?<!\\)&", ln)) == 2 + len(CLASSES)  # 22 columns → 21 separators
    lines = tex.splitlines()
    assert lines[lines.index(rows[-1]) - 1] == r"\midrule"  # separates our rows from the paper row
    assert rows[1].startswith(r"cag\_uda & ours (3 seeds) & ")
    assert rows[-1].startswith(r"AdaptSeg\_Net & Some Paper 50\%, Table 3 & 99.0 & --")  # paper rows never bold
    # our best mIoU is bold on the mean, the std stays outside the bold
    best = max(METHODS, key=lambda m: frame.set_index("method").loc[m, "mIoU"])
    r = frame.set_index("method").loc[best]
    cell = rf"\textbf{{{r['mIoU']:.1f}}}{{\scriptsize$\pm${r['mIoU_std']:.1f}}}"
    assert rows[1 + METHODS.index(best)].endswith(cell + r" \\")


def best_frame():
    """Ours: source_only < cag_uda < oracle; a paper row best on road, below the oracle on mIoU."""
    ours = pd.DataFrame([{"method": m, "seed": s, "road": v + s, "mIoU": v + s}
                         for m, v in (("source_only", 10.0), ("cag_uda", 20.0), ("oracle", 60.0)) for s in (0, 1)])
    return comparison_frame(ours, paper_frame({"road": 90.0, "mIoU": 50.0}), ["road"])


def test_best_is_among_our_methods_only_and_configurable():
    frame = best_frame()  # rows: source_only, cag_uda, oracle, AdaptSeg_Net (paper)
    bold = {k: [ln.count("**") // 2 for ln in to_markdown(frame, **kw).splitlines()[2:]]
            for k, kw in {"ours": {}, "all": {"best": "all"}, "none": {"best": "none"},
                          "with oracle": {"best_exclude": ()}}.items()}
    assert bold["ours"] == [0, 2, 0, 0]  # neither the oracle nor the paper row
    assert bold["with oracle"] == [0, 0, 2, 0]
    assert bold["all"] == [0, 0, 1, 1] and bold["none"] == [0, 0, 0, 0]
    rows = latex_rows(to_latex(frame, "c", "tab:c"))
    assert [r.count(r"\textbf") for r in rows[1:]] == [0, 2, 0, 0]
    with pytest.raises(ValueError, match="best must be"):
        to_markdown(frame, best="paper")


def emitted_tables() -> dict[str, str]:
    """One of every kind of .tex the harness writes, with awkward names, negative numbers and Greek letters."""
    from types import SimpleNamespace

    from bench.stats import Difference
    from bench.sweep_report import sweep_frame, sweep_latex
    from bench.tables import add_differences

    results = make_results(methods=("source_only", "cag_uda", "oracle"), variants=("", "no_dist"))
    ours = per_class_frame(results)
    paper = paper_frame({"road": 99.0, "mIoU": 41.0}, row="Ours & theirs #1 (δ=0.5, 100%)")
    frame = comparison_frame(ours, paper, CLASSES)
    diffs = {n: Difference(d, d - 1.5, d + 1.0) for n, d in zip(frame["method"][frame["ours"]], (0, -2.5, 3, 1, -4, 2))}
    diffs["source_only"] = Difference(0.0, note="reference")
    out = {"per_class": to_latex(frame, "Per-class IoU (%), GTA5→Cityscapes, ρ ≤ 0.9", "tab:pc"),
           "per_class_delta": to_latex(add_differences(frame, diffs, "source_only"), "with Δ", "tab:pcd")}
    names16 = [CLASS_NAMES[c] for c in SUBSETS["16"]]
    r16 = [{"method": "m_1", "seed": s, "miou_16": 0.3, "miou_13_of_16": 0.35, **{f"iou_16/{c}": 0.2 for c in names16}}
           for s in range(2)]
    out["per_class_16"] = to_latex(comparison_frame(per_class_frame(r16, "16"), None, names16, ("mIoU", "mIoU*")),
                                   "16 classes; mIoU*", "tab:16")
    abl = ablation_frame(ours[ours["method"] == "cag_uda"], "cag_uda")
    out["ablation"] = ablation_latex(abl, "Ablation: cag_uda", label="tab:abl")
    abl["paper row"], abl["paper mIoU"] = ["Full", "w/o dist. | α"], [50.2, 47.0]
    out["ablation_paper"] = ablation_latex(abl, "Ablation (paper: CAG-UDA, Table 4)", label="tab:ablp", base="cag_uda")
    gains = ablation_frame(ours[ours["method"] == "cag_uda"], "cag_uda",
                           diffs={"cag_uda (no_dist)": Difference(-1.0, -2.0, -0.1)})
    out["ablation_interval"] = ablation_latex(gains, "with intervals", label="tab:abli")
    rows = pd.DataFrame({"value": [-0.5, 0.1, 0.1], "seed": [0, 0, 1], "mIoU": [30.0, 33.0, 35.0],
                         "PL ratio": [20.0, 25.0, float("nan")], "threshold": [-0.012, 0.3, 0.31]})
    out["sweep"] = sweep_latex(sweep_frame(rows), SimpleNamespace(param="delta_d"), "Δd sweep, ρ_upper", "tab:sw")
    rows = rows.assign(iwcv=[0.4, 9e6, 0.5], **{"IW ESS pct": [40.0, 0.1, 30.0], "IW degenerate": [0.0, 1.0, 0.0]})
    out["sweep_iw"] = sweep_latex(sweep_frame(rows), SimpleNamespace(param="delta_d"), "† weights", "tab:swiw")
    return out


def test_every_emitted_table_is_paste_ready():
    for kind, tex in emitted_tables().items():
        assert re.fullmatch(r"% uda-bench table; needs \\usepackage\{booktabs(,graphicx)?\}", tex.split("\n")[0]), kind
        assert len(re.findall(r"\\label\{tab:[\w-]+\}", tex)) == 1, kind
        assert not re.search(r"(?<![\w.$-])-\d", tex), (kind, "a hyphen used as a minus sign")
        assert "+0.0" not in tex, kind
    tables = emitted_tables()
    assert "$-$2.5 [$-$4.0, $-$1.5]" in tables["per_class_delta"] and "$-$0.5 & 1" in tables["sweep"]
    assert r"cag\_uda & 3 &" in tables["ablation"] and r"& --- \\" in tables["ablation"]  # base row: no gain
    # the ablation tables' long printed row labels need shrinking to the line; the sweep table fits as it is
    ablation = tables["ablation"]
    assert "graphicx" in ablation.split("\n")[0] and r"\resizebox{\ifdim\width>\linewidth" in ablation
    assert "graphicx" not in tables["sweep"].split("\n")[0]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_every_emitted_table_compiles_with_the_packages_it_names(tmp_path):
    """One document per table, whose preamble loads exactly the packages the table's first line names."""
    for kind, tex in emitted_tables().items():
        packages = re.search(r"\\usepackage\{([^}]*)\}", tex.split("\n")[0]).group(1)
        doc = tmp_path / f"{kind}.tex"
        doc.write_text(f"\\documentclass{{article}}\n\\usepackage{{{packages}}}\n\\begin{{document}}\n{tex}"
                       "\\end{document}\n", encoding="utf-8")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (kind, proc.stdout[-3000:])
        log = (tmp_path / f"{kind}.log").read_text(errors="replace")
        assert "Missing character" not in log, kind  # a glyph the font lacks is dropped silently otherwise
        assert (tmp_path / f"{kind}.pdf").stat().st_size > 0


def test_markdown_rows_bold_and_dash():
    md = to_markdown(tie_frame(), "Ties", best="all")  # paper rows only: bold among them
    lines = md.splitlines()
    assert lines[0] == "### Ties"
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 3  # header, alignment, three paper rows
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table]
    assert cells[0] == ["Method", "Source", "road", "sidewalk", "mIoU"]
    assert cells[2][2:] == ["**41.2**", "50.0", "**30.0**"]
    assert cells[3][2:] == ["**41.2**", "**50.1**", "29.0"]
    assert cells[4][2:] == ["41.0", "49.0", "–"]


def test_markdown_ours_and_paper_rows():
    results = make_results()
    frame = comparison_frame(per_class_frame(results), paper_frame({"road": 99.0}), CLASSES)
    rows = [ln for ln in to_markdown(frame, "").splitlines() if ln.startswith("|")][2:]
    assert [r.split("|")[1].strip() for r in rows] == [*METHODS, "AdaptSeg_Net"]
    r0 = frame.iloc[0]
    assert f"| {r0['sidewalk']:.1f} ± {r0['sidewalk_std']:.1f} |" in rows[0].replace("**", "")
    assert rows[2].split("|")[3].strip() == "99.0" and rows[2].split("|")[4].strip() == "–"


def test_terminal_and_write_tables(tmp_path):
    ours = per_class_frame(make_results())
    text = render_terminal(ours, "per-run frame")  # the suite runner's call
    assert "cag_uda" in text and "source_only" in text and "±" in text
    frame = comparison_frame(ours, paper_frame({"road": 99.0}), CLASSES)
    text = render_terminal(frame, "comparison")
    assert "AdaptSeg_Net" in text and "Some Paper 50%, Table 3" in text and "–" in text and "\x1b[" not in text
    paths = write_tables(frame, tmp_path / "out", "gta", "Per-class IoU (%)")
    assert sorted(paths) == ["csv", "md", "tex", "txt"] and all(p.stat().st_size > 0 for p in paths.values())
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == list(frame.columns)
    np.testing.assert_allclose(back["mIoU"], frame["mIoU"])
    np.testing.assert_allclose(back["road_std"], frame["road_std"])


def test_a_method_with_two_paper_ablation_tables(tmp_path):
    """BiSMAP: Table 4 (gains from the baseline variant) and Table 3 (three PLA rows only), as its config declares
    them, each written to its own files with only the rows it maps, the paper's values from results/paper/; a
    printed row that is not in the transcription, or a base that is not a row, is named."""
    from bench.ablations import ablation_specs, ablation_tables
    from methods.base import Method, PaperTable, get_method, register, unregister

    results = make_results(methods=("bismap",), variants=("", "baseline", "stm", "stm_maps", "cas", "ias"))
    results += make_results(seed=1, methods=("source_only",))
    ours = per_class_frame(results)
    suite = {"methods": {"bismap": {"tables": ["t4", "t3"]}}}
    (tmp_path / "tables").mkdir()
    md = "\n".join(ablation_tables(suite, ours, "19", tmp_path, "GTA5"))
    a4 = pd.read_csv(tmp_path / "tables" / "ablation_bismap_t4_19.csv", index_col=0)
    a3 = pd.read_csv(tmp_path / "tables" / "ablation_bismap_pla_19.csv", index_col=0)
    assert list(a4.index) == ["bismap (baseline)", "bismap (stm)", "bismap (stm_maps)", "bismap"]
    assert list(a3.index) == ["bismap (cas)", "bismap (ias)", "bismap (stm_maps)"]
    mean = {v: 100 * np.mean([r["miou_19"] for r in results if r.get("variant", "") == v and r["method"] == "bismap"])
            for v in ("baseline", "stm", "cas", "stm_maps")}
    assert a4.loc["bismap (stm)", "gain"] == pytest.approx(mean["stm"] - mean["baseline"])
    assert a3.loc["bismap (cas)", "gain"] == pytest.approx(mean["cas"] - mean["stm_maps"])
    assert list(a4["paper mIoU"]) == [46.3, 48.2, 57.3, 61.2] and list(a3["paper mIoU"]) == [54.9, 55.4, 57.3]
    assert "| +STM | 48.2 | +1.9 |" in md and "| CAs-PLA | 54.9 | -2.4 |" in md and "BiSMAP, Table 3" in md
    assert "gta5_cityscapes" in md  # the printed values' benchmark, from the table
    assert [t.stem for t in ablation_specs(suite, "bismap")] == ["ablation_bismap_t4", "ablation_bismap_pla"]
    bismap = get_method("bismap")
    bad = PaperTable("bismap", 3, {"cas": ("MAPs", {"pla": "cas"}), "": ("MAPs-PLA", {})})
    register(Method("bismap_typo", bismap.Config, bismap.stages, tables={"t3": bad}))
    try:
        with pytest.raises(KeyError, match=r"table t3.*'MAPs'.*valid"):
            ablation_specs({"methods": {"bismap_typo": {"tables": ["t3"]}}}, "bismap_typo")
    finally:
        unregister("bismap_typo")
    with pytest.raises(KeyError, match="base 'nope'"):
        Method("bismap_typo", bismap.Config, bismap.stages, tables={"t3": PaperTable("bismap", 3, {}, base="nope")})
