"""The quickstart notebook runs top to bottom (tiny model, a few training steps)."""
import pathlib

import pytest

nbclient = pytest.importorskip('nbclient')
nbformat = pytest.importorskip('nbformat')
pytest.importorskip('matplotlib')

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'ipt_quickstart.ipynb'


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source[:60]


# Run after the notebook's `parameters` cell: two tasks and a few steps keep the test short.
OVERRIDES = "TRAIN_STEPS, TASKS = 4, ('sr_x2', 'denoise_30')"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  [parameters] = [i for i, c in enumerate(notebook.cells)
                  if 'parameters' in c.metadata.get('tags', [])]
  notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(OVERRIDES))
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  client.execute()  # Raises CellExecutionError, naming the cell, if any cell fails.
  outputs = ''.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code'
                    for o in c.outputs)
  assert 'tensors in all' in outputs and '| sr_x2 | Mini |' in outputs
  images = sum(1 for c in notebook.cells if c.cell_type == 'code' for o in c.outputs
               if 'image/png' in o.get('data', {}))
  assert images == 2 + 2  # A figure per task, the attention map, the embedding similarity.
