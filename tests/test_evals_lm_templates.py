"""lm-eval prompts rendered through our compiled-template cache equal lm-eval's stock rendering."""
from types import SimpleNamespace

import lm_eval.utils

from qexp.evals import lm_templates
from qexp.evals.data import mmlu_dataset_path
from qexp.evals.mmlu import NUM_FEWSHOT, load_mmlu_tasks


def _requests(dataset_path: str) -> list:
    _, _, tasks = load_mmlu_tasks(dataset_path, ["abstract_algebra", "high_school_biology"])
    out = []
    for name, task in sorted(tasks.items()):
        task.set_config("num_fewshot", NUM_FEWSHOT)
        task.build_all_requests(samples=list(range(0, 60, 7)))
        out += [(name, inst.doc_id, inst.args) for inst in task.instances]
    return out


def test_cached_templates_render_the_stock_prompts(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("QEXP_CACHE_DIR", str(tmp_path))
    path = mmlu_dataset_path(SimpleNamespace(data_dir=str(shared_data)))
    assert lm_eval.utils.apply_template is lm_templates.apply_template  # installed by qexp.evals.lm_tasks
    ours = _requests(path)
    monkeypatch.setattr(lm_eval.utils, "apply_template", lm_templates.STOCK_APPLY_TEMPLATE)
    stock = _requests(path)
    assert len(ours) == 9 * 4 * 2 and ours == stock
