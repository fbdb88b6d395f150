"""The README's screenshots, taken the way the browser tests look: TensorBoard on a loopback port and
report.html from disk, in headless Chromium.

    make demo && make screenshots          # or: python docs/screenshots.py runs/demo docs/
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser helpers

from browser import chromium, deep_elements, deep_texts, tensorboard_server, wait_until  # noqa: E402

LOAD_S = 90.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep directory with its report (runs/demo)")
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).parent, help="where the PNGs go")
    args = parser.parse_args()
    sweep, out = args.sweep.resolve(), args.out.resolve()
    if not (sweep / "report.html").is_file():
        sys.exit(f"{sweep}: no report.html; run `rsam-dist report {sweep}` first")
    with tensorboard_server(sweep) as url, chromium(width=1500, height=900) as page:
        page.get(f"{url}/#hparams")
        wait_until(lambda: any(text.startswith("trials/") for text in deep_texts(page, "div.table-cell")), LOAD_S,
                   "the HParams table")
        page.save_screenshot(str(out / "demo-tensorboard-hparams.png"))
        page.get(f"{url}/#custom_scalars")
        wait_until(lambda: "combined and per glimpse" in deep_texts(page, ".heading-label.name"), LOAD_S,
                   "the per-glimpse chart")
        page.save_screenshot(str(out / "demo-tensorboard-per-glimpse.png"))
        runs = sorted(path.parent.relative_to(sweep).as_posix() for path in sweep.rglob("events.out.tfevents.*"))
        last_run = runs[-1]
        page.get(f"{url}/#images&regexInput=" + urllib.parse.quote(f"^{last_run}$"))
        wait_until(lambda: [image for image in deep_elements(page, "img")
                            if "individualImage" in (image.get_attribute("src") or "")], LOAD_S, "Figure 1")
        actual_size = next(box for box in deep_elements(page, "paper-checkbox")
                           if "actual image size" in box.get_attribute("textContent"))
        page.execute_script("arguments[0].click()", actual_size)
        page.save_screenshot(str(out / "demo-tensorboard-figure1.png"))
    with chromium(width=1100, height=900) as page:
        page.get((sweep / "report.html").as_uri())
        page.save_screenshot(str(out / "demo-report.png"))
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
