"""The quickstart notebook runs top to bottom (tiny model, on the session's trained run)."""
import pathlib
import shutil

import pytest

nbclient = pytest.importorskip('nbclient')
nbformat = pytest.importorskip('nbformat')
pytest.importorskip('matplotlib')

from tests.conftest import TRAINED_STEPS
from tests.conftest import TRAINED_TASKS

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'ipt_quickstart.ipynb'


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(trained_run, tmp_path):
  # A copy of the session's finished run: the training cell resumes it with nothing left to
  # do (training itself is tested on that run), and the rest of the notebook runs on it.
  workdir = shutil.copytree(trained_run.workdir, tmp_path / 'run')
  overrides = f'TRAIN_STEPS, TASKS, WORKDIR = {TRAINED_STEPS}, {TRAINED_TASKS}, {str(workdir)!r}'
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  [parameters] = [i for i, c in enumerate(notebook.cells)
                  if 'parameters' in c.metadata.get('tags', [])]
  notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(overrides))
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  client.execute()  # Raises CellExecutionError, naming the cell, if any cell fails.
  outputs = ''.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code'
                    for o in c.outputs)
  assert f'steps {TRAINED_STEPS} to {TRAINED_STEPS} of {TRAINED_STEPS}' in outputs  # Resumed.
  assert 'tensors in all' in outputs and '| sr_x2 | Mini |' in outputs
  images = sum(1 for c in notebook.cells if c.cell_type == 'code' for o in c.outputs
               if 'image/png' in o.get('data', {}))
  assert images == 2 + 2  # A figure per task, the attention map, the embedding similarity.
