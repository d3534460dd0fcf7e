"""Reports people read: the HTML page in a real browser, the CI gate, the DataFrame, notebooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fidelity.compare import main as compare_main
from fidelity.gate import main as gate_main
from fidelity.report.frame import report_frame

ROOT = Path(__file__).resolve().parent.parent
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "clean"
    assert compare_main(["--out", str(out), "-q"]) == 0
    return out / "report.json"


@pytest.fixture(scope="module")
def faulty_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "faulty"
    assert compare_main(["--fault", "ln_eps_1e-6", "--out", str(out), "-q"]) == 1
    return out / "report.json"


def test_gate_passes_clean_and_fails_a_fault_naming_the_taps(tmp_path, clean_report, faulty_report, capsys):
    baseline = tmp_path / "baseline.json"
    assert gate_main(["--baseline", str(baseline), "--report", str(clean_report), "--update"]) == 0
    assert gate_main(["--baseline", str(baseline), "--report", str(clean_report)]) == 0
    assert "within tolerance" in capsys.readouterr().out
    assert gate_main(["--baseline", str(baseline), "--report", str(faulty_report)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION encoder.blocks.0.attn_ln: noise_floor_ratio" in out
    assert gate_main(["--baseline", str(baseline), "--report", str(faulty_report), "--update"]) == 2


def test_committed_baseline_matches_a_fresh_run(clean_report):
    assert gate_main(["--baseline", str(ROOT / "reports" / "baseline.json"), "--report", str(clean_report)]) == 0


def test_gate_refuses_unusable_input(tmp_path, clean_report, capsys):
    baseline = tmp_path / "baseline.json"
    gate_main(["--baseline", str(baseline), "--report", str(clean_report), "--update"])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    other = json.loads(clean_report.read_text())
    other["model"]["dims"]["n_audio_layer"] = 32
    other_model = tmp_path / "other_model.json"
    other_model.write_text(json.dumps(other))
    fewer = json.loads(clean_report.read_text())
    fewer["taps"] = fewer["taps"][:-1]
    fewer_taps = tmp_path / "fewer.json"
    fewer_taps.write_text(json.dumps(fewer))
    for report, message in ((tmp_path / "absent.json", "does not exist"), (corrupt, "not valid JSON"),
                            (other_model, "another model"), (fewer_taps, "missing: encoder.ln_post")):
        assert gate_main(["--baseline", str(baseline), "--report", str(report)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_report_frame(clean_report):
    frame = report_frame(clean_report)
    assert frame.index[-1] == "encoder.ln_post" and frame.loc["encoder.ln_post", "verdict"] == "ok"
    assert frame.attrs["dtype"] == "float32" and frame["noise_floor_ratio"].max() <= 10


@pytest.mark.skipif(CHROMEDRIVER is None, reason="needs Debian's chromium and chromium-driver (scripts/setup.sh)")
def test_html_report_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out = tmp_path / "html"
    code = compare_main(["--html", "--isolate", "--e2e", "--fault", "missing_ln_post", "--out", str(out), "-q"])
    assert code == 1
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((out / "report.html").as_uri())
        body = driver.find_element(By.TAG_NAME, "body")
        rendered, total = body.get_attribute("data-images-rendered").split("/")
        assert rendered == total and int(total) >= 3
        assert not [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        diverged = driver.find_elements(By.CSS_SELECTOR, "td.diverged")
        assert diverged and driver.find_elements(By.TAG_NAME, "del")  # coloured verdicts, transcript diff
        assert "missing_ln_post" in driver.find_element(By.CSS_SELECTOR, "table.meta").text
    finally:
        driver.quit()


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebooks_run_top_to_bottom(tmp_path, notebook):
    book = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "clear outputs"
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
