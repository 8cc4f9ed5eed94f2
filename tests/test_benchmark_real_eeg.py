"""The recorded-EEG benchmark's paired comparison of single trials."""

from benchmarks.real_eeg import POSTERIOR_Y, _posterior_against, _posterior_fraction


def _peak(y):
    return {"y_mm": y}


def test_the_paired_comparison_counts_disagreeing_trials_only():
    back, front = _peak(POSTERIOR_Y - 10), _peak(POSTERIOR_Y + 10)
    here = [back, back, back, front, None, back]
    reference = [back, front, front, front, back, None]
    only_here, only_reference, p_value = _posterior_against(here, reference)
    assert (only_here, only_reference) == (3, 1)  # trials 2, 3 and 6 against trial 5
    assert 0.6 < p_value < 0.65  # exact two-sided binomial, 3 of 4: 0.625
    assert _posterior_against(reference, reference) == (0, 0, 1.0)
    assert _posterior_fraction(here) == 4 / 5  # trials without a peak are left out
