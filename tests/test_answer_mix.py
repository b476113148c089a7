"""The select summary's count of the domain's labels among the selected rows' answers."""

from ntk_selector.selection.answer_mix import answer_mix, format_answer_mix, normalise_answer


def test_counts_per_label_and_warns_about_a_missing_common_label():
    domain = ["negative"] * 3 + ["Neutral"] * 3 + ["positive."] * 4
    selected = ["Positive", "positive", "negative", "a long free answer", "NEGATIVE!"]
    mix = answer_mix(domain, selected)
    assert mix["labels"] == {
        "negative": {"domain": 3, "selected": 2},
        "neutral": {"domain": 3, "selected": 0},
        "positive": {"domain": 4, "selected": 2},
    }
    assert mix["selected_other"] == 1
    assert len(mix["warnings"]) == 1 and "'neutral'" in mix["warnings"][0] and "30%" in mix["warnings"][0]
    lines = format_answer_mix(mix)
    assert "negative 3/2, neutral 3/0, positive 4/2" in lines[0] and lines[1].startswith("  WARNING:")


def test_no_warning_when_every_label_is_given_or_the_missing_one_is_rare():
    domain = ["yes"] * 19 + ["no"]  # "no" is 5% of D: under the warning share
    assert answer_mix(domain, ["yes", "yes"])["warnings"] == []
    assert answer_mix(["a", "b", "a", "b"], ["a", "b"])["warnings"] == []


def test_no_warning_when_no_selected_row_answers_with_a_label():
    mix = answer_mix(["yes", "no"] * 5, ["some text", "more text"])
    assert mix["selected_other"] == 2 and mix["warnings"] == []


def test_free_form_domain_has_no_label_mix():
    assert answer_mix([f"answer {i}" for i in range(10)], ["answer 1"]) is None  # every answer distinct
    assert answer_mix([str(i % 25) for i in range(100)], ["1"]) is None  # more than MAX_LABELS labels
    assert answer_mix([], []) is None


def test_normalise_answer():
    assert normalise_answer("  Positive. ") == "positive" == normalise_answer("POSITIVE!")
    assert normalise_answer("not  sure") == "not sure"
