"""Property-based checks (hypothesis) of what a run does with any records and any settings:
exit 0 with valid outputs, or exit 2 with one line; never a traceback, never a changed user field.

Examples are few and fixed per run (``derandomize``) so the suite stays fast and repeatable;
raise ``max_examples`` locally to search harder.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import yaml
from conftest import synthetic_rows, write_jsonl
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ntk_selector.cli.commands import main
from ntk_selector.io.outputs import our_fields, user_record

pytestmark = pytest.mark.usefixtures("one_thread")

# no shrinking phase: a failure is reported as generated, so a failing run stays as fast as a passing one
FAST = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


def run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def assert_clean_failure(rc: int, err: str) -> None:
    """Exit 2 and exactly one error line, no traceback (warnings may come before it)."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ntk-selector: error:")]
    assert len(errors) == 1, err
    assert all(line.startswith(("ntk-selector: error:", "WARNING:")) for line in err.splitlines() if line.strip()), err


# ----------------------------------------------------------------------------- records

any_text = st.text(alphabet=st.characters(), max_size=12)  # every code point, lone surrogates included
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
extra_key = (
    st.sampled_from(["pool_index", "ntk_score", "__line__", "ntk_selector", "_ntk_selector", "task", "id"]) | any_text
)
record = st.builds(
    lambda p, r, extra: {**extra, "prompt": p, "response": r},
    any_text,
    any_text,
    st.dictionaries(extra_key, json_value, max_size=4),
)


@FAST
@given(pool=st.lists(record, min_size=1, max_size=8), n=st.integers(1, 4))
def test_any_records_come_out_as_they_went_in(pool, n, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    domain = write_jsonl(tmp / "domain.jsonl", synthetic_rows(4, 1))
    pool_path = tmp / "pool.jsonl"
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in pool), encoding="utf-8")
    rc, err = run(
        [
            "select",
            "--domain",
            domain,
            "--pool",
            pool_path,
            "--out",
            tmp / "o",
            "--n",
            n,
            "--model",
            tiny_model_dir,
            "--method",
            "random",
            "--quiet",
        ]
    )
    if rc != 0:
        assert_clean_failure(rc, err)
        return
    lines = [
        json.loads(line) for line in (tmp / "o" / "selected.jsonl").read_text(encoding="utf-8").split("\n") if line
    ]
    assert len(lines) == n
    indices = [our_fields(obj)["pool_index"] for obj in lines]
    assert len(set(indices)) == n
    for obj, i in zip(lines, indices, strict=True):
        assert user_record(obj) == pool[i]  # every user field unchanged, including ones named like ours


# ----------------------------------------------------------------------------- settings

SMALL_INT = st.integers(-3, 40)
anything = (
    SMALL_INT
    | st.floats(-2, 50, allow_nan=False)
    | st.text(max_size=8)
    | st.booleans()
    | st.none()
    | st.lists(SMALL_INT, max_size=2)
    | st.sampled_from(["1e-4", "4", "false", "true", "float16", "ce", "q_proj"])
)
# values a user may mean (as YAML or flag text too); every combination of them must run
VALID = {
    "max_length": st.integers(8, 64) | st.just("32"),
    "token_budget": st.integers(64, 512),
    "max_batch_size": st.integers(1, 8),
    "rank": st.integers(1, 8) | st.just("4"),
    "lora_alpha": st.floats(0.5, 32) | st.just("1e1"),
    "lora_dropout": st.floats(0, 0.5),
    "target_modules": st.sampled_from(["q_proj", ["q_proj", "v_proj"], "o_proj"]),
    "seed": st.integers(0, 100),
    "proj_dim": st.sampled_from([0, 8, 16, "24"]),
    "objective": st.sampled_from(["ntk", "ntk-all", "ntk-content", "ce"]),
    "logits": st.sampled_from(["auto", "full"]),
    "store_dtype": st.sampled_from(["float32", "float16"]),
    "prompt_field": st.just("prompt"),
    "overwrite": st.booleans(),
    "checkpoint_every": st.integers(0, 10),
    "quiet": st.booleans(),
    "no_chat_template": st.booleans(),
}
SETTINGS = sorted(VALID)


@st.composite
def settings_of(draw):
    keys = draw(st.lists(st.sampled_from(SETTINGS), min_size=1, max_size=4, unique=True))
    valid = draw(st.booleans())
    return valid, {k: draw(VALID[k] if valid else anything) for k in keys}


@FAST
@given(case=settings_of(), on_command_line=st.booleans())
def test_any_settings_run_or_are_refused_in_one_line(case, on_command_line, tiny_model_dir, tmp_path_factory):
    valid, chosen = case
    tmp = tmp_path_factory.mktemp("settings")
    data = write_jsonl(tmp / "d.jsonl", synthetic_rows(4, 3))
    argv = ["featurize", "--data", data, "--out", tmp / "o", "--model", tiny_model_dir, "--quiet"]
    argv += [] if "proj_dim" in chosen else ["--proj-dim", "8"]
    if on_command_line:
        for key, value in chosen.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool) or value is None:
                argv += [flag] if value else []
            elif isinstance(value, list):
                argv += [flag, *map(str, value)] if value else [flag]
            else:
                argv += [flag, str(value)]
    else:
        (tmp / "c.yaml").write_text(yaml.safe_dump(chosen), encoding="utf-8")
        argv += ["--config", tmp / "c.yaml"]
    rc, err = run(argv)
    if rc != 0:
        assert not valid, f"valid settings {chosen} refused: {err}"
        assert_clean_failure(rc, err)
        return
    meta = json.loads((tmp / "o" / "meta.json").read_text())
    features = np.load(tmp / "o" / "features.npy")
    assert meta["complete"] and features.shape[0] == 4 and np.isfinite(features).all()
    definition = meta["definition"]
    for key in ("proj_dim", "seed", "objective"):  # stored as the user meant it ("24" is 24)
        if key in chosen and valid:
            assert str(definition[key]) == str(chosen[key])
    if "rank" in chosen and valid:
        assert definition["lora"]["rank"] == int(chosen["rank"])
