"""Every case of the bad-input table (benchmarks/bad_inputs/bad_input_cases.py) ends clear: the expected exit code,
one line naming the place and what to do, no traceback, no user file or field changed, and
correct outputs where the input was valid."""

import pytest

from benchmarks.bad_inputs.bad_input_cases import CASES, run_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_is_clear(case, tiny_model_dir, tmp_path):
    outcome, detail = run_case(case, tmp_path / "case", tiny_model_dir)
    assert outcome == "clear", detail


def test_the_table_covers_every_group():
    groups = {c.group for c in CASES}
    assert groups == {"loss", "setting", "data", "store", "message"}
    assert len({c.id for c in CASES}) == len(CASES)
