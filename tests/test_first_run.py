"""A first run without surprises: the docs' own example, plugins beside the pipeline, the log sink,
`costream list` in a pipe and on a narrow terminal, YAML type names in errors."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from stream.cli import main
from stream.config import ConfigError, load_pipeline
from stream.dashboard import print_kinds
from stream.registry import kinds

ROOT = Path(__file__).resolve().parents[1]
# What the `costream` console script does: the script's own folder, not the working directory, leads sys.path.
CONSOLE_SCRIPT = "import sys\nfrom stream.cli import main\nsys.exit(main())\n"


def blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def console_script(tmp_path: Path) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "costream_cli.py"
    script.write_text(CONSOLE_SCRIPT)
    return [sys.executable, str(script)]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_write_a_node_example_runs_as_written_and_loses_no_frame(tmp_path):
    """docs/write-a-node.md: the module, the YAML (run from the folder holding `mypackage/`, by the console
    script) and the test, exactly as the page gives them."""
    doc = (ROOT / "docs" / "write-a-node.md").read_text()
    python, yaml_blocks = blocks(doc, "python"), blocks(doc, "yaml")
    project = tmp_path / "project"
    (project / "mypackage").mkdir(parents=True)
    (project / "mypackage" / "__init__.py").write_text("")
    (project / "mypackage" / "ema.py").write_text(python[0])
    (project / "pipeline.yaml").write_text(yaml_blocks[0])
    cli = console_script(tmp_path)
    run = subprocess.run([*cli, "run", "pipeline.yaml", "--quiet", "--report", "report.json"], cwd=project,
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads((project / "report.json").read_text())
    produced = report["nodes"]["cam"]["frames_out"]
    assert produced == 100 and report["nodes"]["out"]["frames_in"] == produced  # no frame dropped on the way
    assert all(e["dropped"] == 0 and e["policy"] == "block" for e in report["edges"])

    # the pipeline's folder is importable too, from any working directory
    elsewhere = subprocess.run([*cli, "validate", str(project / "pipeline.yaml")], cwd=tmp_path, env=child_env(),
                               capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr

    (project / "test_ema.py").write_text(python[-1])
    test = subprocess.run([sys.executable, "-c", "import test_ema; test_ema.test_ema_smooths_each_stream()"],
                          cwd=project, env=child_env(), capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, test.stderr


def test_a_module_class_kind_that_is_nowhere_says_where_it_looked(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("nodes:\n  cam: {kind: nopackage_xyz.mod:Thing}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env={})
    text = str(info.value)
    assert "No module named 'nopackage_xyz'" in text and str(tmp_path) in text and "put the folder holding" in text


def test_the_log_sink_logs_at_the_default_log_level(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text("nodes:\n  cam: {kind: synthetic, params: {count: 3, shape: [2]}}\n  out: {kind: log, inputs: [cam]}\n")
    assert logging.getLogger().getEffectiveLevel() == logging.WARNING  # what `costream run` sets by default
    assert main(["run", str(path), "--quiet"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "costream.sink.out"]
    assert len(lines) == 3 and lines[0].startswith("cam seq=0 ndarray(2,) float32 latency=")


def test_list_into_a_closed_pipe_exits_quietly(tmp_path):
    proc = subprocess.Popen([*console_script(tmp_path), "list", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(), cwd=tmp_path)
    proc.stdout.close()  # like `| head` that has read enough: the reader is gone before the listing is written
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 141


def test_list_never_wraps_names_or_headers_on_a_narrow_terminal():
    console = Console(width=60, force_terminal=True, record=True, color_system=None)
    known = kinds()
    print_kinds({name: known[name] for name in ("cox3d", "video")}, console=console)
    text = console.export_text()
    for name in ("idle_timeout_s", "reconnect_max_backoff_s", "weights"):
        assert re.search(rf"^ {name} +│", text, flags=re.M), f"{name!r} was wrapped or cut:\n{text}"
    headers = [line for line in text.splitlines() if "param" in line and "┃" in line]
    assert len(headers) == 2 and all(re.search(r"param +┃ type +┃ default +┃ doc", h) for h in headers), text
    assert "consumes video (C, T?, H, W); produces scores (classes,)" in text


def test_errors_name_yaml_types_not_loader_classes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        options: [1, 2]
        nodes:
          cam: {kind: synthetic, params: {count: [1, 2], dtype: {a: 1}}}
        """))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env={})
    text = str(info.value)
    assert "Located" not in text and "got [1, 2] (list)" in text and "(dict)" in text and "got list" in text
