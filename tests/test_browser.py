"""What a user sees, checked in a real browser: TensorBoard on a loopback port for a short real run
and a short real sweep, and report.html opened from disk, in headless Chromium (tests/browser.py).
Screenshots land in each test's temporary folder (`pytest --basetemp DIR` keeps them findable).
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest
from browser import chromium, deep_elements, deep_texts, pixel_spread, tensorboard_server, wait_until
from selenium.webdriver.common.by import By
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rsam_dist.report import write_report
from rsam_dist.sweep import load_sweep_results
from rsam_dist.tensorboard_log import FIGURE1_TAG

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]
LOAD_S = 60.0
"""How long a dashboard may take to show its data on a busy 2-core machine."""


def _figure1_size(run_dir: Path) -> tuple[int, int]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    last = events.Images(FIGURE1_TAG)[-1]
    return last.width, last.height


def test_tensorboard_shows_a_runs_charts_and_its_figure1_at_full_size(finished_run, tmp_path):
    width, height = _figure1_size(finished_run / "tensorboard")
    assert width >= 5 * 32 * 4  # image + 2 glimpses x (mask, what it saw), 128-pixel tiles
    with tensorboard_server(finished_run) as url, chromium() as page:
        wanted = {"test/top1", "train/loss"}
        page.get(f"{url}/#scalars&tagFilter=" + urllib.parse.quote("^(test/top1|train/loss)$"))
        wait_until(lambda: wanted <= set(deep_texts(page, ".heading-label.name")), LOAD_S,
                   "the accuracy and loss charts")
        page.save_screenshot(str(tmp_path / "tensorboard-scalars.png"))

        page.get(f"{url}/#images")
        image = wait_until(lambda: _loaded_images(page), LOAD_S, "the Figure 1 image")[0]
        actual_size = next(box for box in deep_elements(page, "paper-checkbox")
                           if "actual image size" in box.get_attribute("textContent"))
        page.execute_script("arguments[0].click()", actual_size)
        shown = wait_until(lambda: _shown_size(page, image) == (width, height) and _shown_size(page, image),
                           LOAD_S, f"Figure 1 at its full {width}x{height}")
        assert shown == (width, height)
        assert page.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [
            width, height]
        assert pixel_spread(page, image) > 100  # masks and images drawn, not a blank tile
        page.save_screenshot(str(tmp_path / "tensorboard-images.png"))


def _loaded_images(page) -> list:
    return [image for image in deep_elements(page, "img")
            if "individualImage" in (image.get_attribute("src") or "")
            and page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)]


def _shown_size(page, image) -> tuple[int, int]:
    return tuple(page.execute_script("return [arguments[0].clientWidth, arguments[0].clientHeight]", image))


def test_tensorboard_shows_a_sweep_as_one_view(grid_sweep, tmp_path):
    results = load_sweep_results(grid_sweep.directory)
    glimpses = {trial.trial_id: int(trial.params["model.glimpses"]) for trial in results.trials}
    runs = {f"trials/{trial_id}/tensorboard/glimpses={count}" for trial_id, count in glimpses.items()}
    with tensorboard_server(grid_sweep.directory) as url, chromium(width=1800) as page:
        page.get(f"{url}/#hparams")
        # One row per trial, each named after what the trial is, with the searched value and
        # every glimpse's final accuracy as columns.
        wait_until(lambda: runs == {text for text in deep_texts(page, "div.table-cell") if text.startswith("trials/")},
                   LOAD_S, f"the HParams rows {sorted(runs)}")
        columns = deep_texts(page, "div.table-header")
        assert {"model.glimpses", "hparams/final_test_top1", "hparams/final_test_top1_glimpse_1",
                "hparams/final_test_top1_glimpse_2", "hparams/final_images_per_sec"} <= set(columns), columns
        page.save_screenshot(str(tmp_path / "tensorboard-hparams.png"))

        page.get(f"{url}/#custom_scalars")
        wait_until(lambda: "combined and per glimpse" in deep_texts(page, ".heading-label.name"), LOAD_S,
                   "the per-glimpse chart")
        # Every trial's combined top-1 and each of its glimpses' in that one chart.
        lines = sum(count + 1 for count in glimpses.values())
        wait_until(lambda: f"Matches ({lines})" in deep_texts(page, "span.matches-text"), LOAD_S,
                   f"{lines} lines in the per-glimpse chart")
        page.save_screenshot(str(tmp_path / "tensorboard-custom-scalars.png"))


def test_report_html_opened_from_disk_shows_every_figure(grid_sweep, tmp_path):
    directory = tmp_path / "sweep"
    shutil.copytree(grid_sweep.directory, directory)  # the session's sweep stays as other tests expect it
    figures = [path for path in write_report(directory) if path.suffix == ".png"]
    assert figures
    with chromium() as page:
        page.get((directory / "report.html").as_uri())
        images = wait_until(lambda: page.find_elements(By.TAG_NAME, "img"), LOAD_S, "the report's figures")
        assert len(images) == len(figures)
        for image in images:
            assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            assert image.get_attribute("src").startswith("data:image/png;base64,")  # no file beside it needed
            assert pixel_spread(page, image) > 100
        assert "Verdict" in page.find_element(By.TAG_NAME, "body").text
        page.set_window_size(1200, page.execute_script("return document.body.scrollHeight") + 100)
        page.save_screenshot(str(tmp_path / "report.png"))
