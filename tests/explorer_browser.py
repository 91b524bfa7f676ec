"""Serve notebooks/00_explorer with Voila and drive it in Chromium through Playwright.

Used by tests/test_browser.py, and on its own to refresh the README screenshot:

    .venv/bin/python tests/explorer_browser.py --model smollm2-135m --k 20 --j 20 --out figures/explorer.png

Playwright cannot download its own browser here: it drives Debian's
``chromium`` (installed by ``run.sh test`` where missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_explorer.py"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY = ".commlib-ready"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_problem() -> str | None:
    """Why no browser test can run here, or ``None``."""
    if chromium_path() is None:
        return "no chromium on PATH: run.sh installs Debian's chromium (apt-get install chromium) as root"
    for module in ("playwright", "voila"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[dev]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served_explorer(workdir: Path, parameters: dict[str, Any], timeout: float = 60) -> Iterator[str]:
    """The explorer notebook with ``parameters`` injected (papermill, not executed), served by Voila."""
    import jupytext
    import papermill

    workdir.mkdir(parents=True, exist_ok=True)
    source, prepared = workdir / "00_explorer.ipynb", workdir / "explorer.ipynb"
    jupytext.write(jupytext.read(NOTEBOOK), source)
    papermill.execute_notebook(
        str(source),
        str(prepared),
        parameters=parameters,
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
    )
    port = _free_port()
    log = (workdir / "voila.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            prepared.name,
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True",
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()  # listening
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"voila did not start; see {workdir / 'voila.log'}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def chromium_page(profile: Path, width: int = 1280, height: int = 1100) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_explorer(page: Any, url: str, timeout_ms: float = 180_000) -> None:
    """Open the served explorer and wait for its first answer (Voila runs the notebook meanwhile)."""
    page.goto(url, wait_until="commit", timeout=timeout_ms)
    page.locator(READY).wait_for(timeout=timeout_ms)


def wait_ready(page: Any, config_text: str, timeout_ms: float = 180_000) -> None:
    """Wait until the explorer shows an answer for the settings in ``config_text`` (e.g. ``j=2``)."""
    page.locator(READY).wait_for(timeout=timeout_ms)
    page.locator(".commlib-answers", has_text=config_text).wait_for(timeout=timeout_ms)
    page.locator(READY).wait_for(timeout=timeout_ms)


def rendered_answer(page: Any) -> str:
    """B's answer under the graft as the browser renders it (whitespace collapsed)."""
    return " ".join(page.locator(".commlib-grafted").inner_text().split())


def set_slider(page: Any, label: str, value: float) -> None:
    """Type ``value`` into the readout of the slider labelled ``label`` and press Enter."""
    slider = page.locator(".widget-slider").filter(has=page.get_by_text(label, exact=True))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def set_dropdown(page: Any, label: str, value: str) -> None:
    """Pick ``value`` in the dropdown labelled ``label``."""
    box = page.locator(".widget-dropdown").filter(has=page.get_by_text(label, exact=True))
    box.locator("select").select_option(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--j", type=int, default=20)
    parser.add_argument("--n-reference", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / "figures" / "explorer.png"))
    args = parser.parse_args()
    problem = browser_problem()
    if problem:
        sys.exit(problem)
    work = ROOT / "test-artifacts" / "explorer-screenshot"
    params = {"SENDER": args.model, "RECEIVER": args.model, "K": args.k, "J": args.j}
    params["N_REFERENCE"] = args.n_reference
    with served_explorer(work, params) as url, chromium_page(work / "profile") as page:
        open_explorer(page, url, timeout_ms=900_000)
        wait_ready(page, f"j={args.j}")
        page.screenshot(path=args.out, full_page=True)
    Path(f"{Path(args.out).with_suffix('')}.json").write_text(
        json.dumps({"made_by": "tests/explorer_browser.py", "arguments": vars(args)}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
