"""Rule 7 of the fidelity rules (`research.stability.fidelity_goals`): the comparison rule's
simulated false-positive rate and power."""

from research.stability import fidelity_goals


def test_rule_error_rates():
    fp, power = fidelity_goals.rule_error_rates(0.03, 3)
    assert 0.0 < fp < 0.3 and fp < power < 1.0
    _, more_power = fidelity_goals.rule_error_rates(0.03, 8)
    assert more_power > power
