"""The helpers both LLM implementations share (mpo_fast/judges/llm.py)."""
import pytest

from mpo_fast.judges.llm import check_choice_rows, cut_at_stop, per_row_constraints


def test_cut_at_stop_keeps_text_before_the_earliest_stop_string():
    assert cut_at_stop("Score: 7\nEND more", ["\n", "END"]) == ("Score: 7", True)
    assert cut_at_stop("END", ["END"]) == ("", True)
    assert cut_at_stop("no stop here", ["END"]) == ("no stop here", False)
    assert cut_at_stop("anything", None) == ("anything", False)
    assert cut_at_stop("anything", []) == ("anything", False)


def test_per_row_constraints_expands_none_and_checks_the_count():
    assert per_row_constraints(None, 3) == [None, None, None]
    assert per_row_constraints((None, None), 2) == [None, None]
    with pytest.raises(ValueError, match="1 constraints for 2 conversations"):
        per_row_constraints([None], 2)


def test_check_choice_rows_needs_one_prefill_and_choice_set_per_conversation():
    convo = [{"role": "user", "content": "hi"}]
    check_choice_rows([convo], ["Score: "], [object()])
    with pytest.raises(ValueError, match="one prefill and one choice set"):
        check_choice_rows([convo, convo], ["Score: "], [object(), object()])
