"""Every row of the attack matrix (issue 6), both ways: the attack succeeds without its protection,
is blocked with it, and the hypervisor's own evidence names the mechanism that stopped it."""

import pytest

from vtlvisor.attacks import Row, RunOutcome, catalogue, run_one

ROWS = {a.name: a for a in catalogue()}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_both_ways(name):
    a = ROWS[name]
    row = Row(a.name, a.protection, run_one(a, False), run_one(a, True), a.expect, a.expect_guest)
    # the same judgement the matrix prints (attacks.Row.problems)
    assert row.problems() == [], f"{name} ({a.protection})"


def test_every_row_names_the_mechanism():
    """Every row says which evidence proves the block: "some evidence" could be any refusal at all."""
    assert all(a.expect or a.expect_guest for a in ROWS.values()), [a.name for a in ROWS.values()
                                                                    if not (a.expect or a.expect_guest)]


def _run(outcome: str, evidence=(), guest=()) -> RunOutcome:
    return RunOutcome(outcome, f"ATTACK x: {outcome}", list(evidence), guest_evidence=list(guest))


def test_row_judgement_cannot_pass_on_the_wrong_evidence():
    ok = Row("x", "p", _run("SUCCEEDED"), _run("BLOCKED", ["CR4 write blocked"]), expect="CR4 write")
    assert ok.ok
    for bad in (Row("x", "p", _run("ERROR"), ok.with_, expect="CR4 write"),
                Row("x", "p", ok.without, _run("ERROR", ["CR4 write blocked"]), expect="CR4 write"),
                Row("x", "p", ok.without, _run("BLOCKED", ["something else"]), expect="CR4 write"),
                Row("x", "p", _run("SUCCEEDED", ["CR4 write blocked"]), ok.with_, expect="CR4 write"),
                Row("x", "p", ok.without, _run("BLOCKED")),
                Row("x", "p", ok.without, _run("BLOCKED", ["ev"]), expect_guest="kcfg: blocked"),
                Row("x", "p", _run("SUCCEEDED", guest=["kcfg: blocked"]), _run("BLOCKED", guest=["kcfg: blocked"]),
                    expect_guest="kcfg: blocked")):
        assert not bad.ok and bad.problems(), bad


def test_a_verdict_followed_by_an_internal_error_is_an_error(monkeypatch):
    from vtlvisor.hv.partition import Partition
    from vtlvisor.hv.stop import RunResult, StopReason
    real = Partition.run

    def run(self, *a, **kw):
        real(self, *a, **kw)                               # the guest prints its verdict, then the hypervisor fails
        return RunResult(StopReason.INTERNAL_ERROR, "RuntimeError: boom")
    monkeypatch.setattr(Partition, "run", run)
    res = run_one(ROWS["smep"], True)
    assert res.outcome == "ERROR" and "ATTACK smep: BLOCKED" in res.line and "internal-error" in res.line
